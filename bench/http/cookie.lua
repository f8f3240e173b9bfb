-- wrk script for scripts/bench-http: each connection keeps its own session
-- cookie, as a browser would.
--
--   wrk -t C -c C -s bench/http/cookie.lua http://127.0.0.1:PORT -- /read
--
-- wrk gives every thread its own Lua state, so with one connection per
-- thread (-t C -c C) the globals below are per connection.
--
-- The cookie comes from the connection's first request, always to /inc
-- (it creates the session, counter 1); every later request goes to the
-- route under test (the script argument) with that cookie. Getting it in
-- init() is not possible (wrk's Lua has no sockets), and seeding sessions
-- from outside would need a store-specific backdoor on both sides. That
-- one request per connection is a first request like any other in the
-- measured run: scripts/bench-http runs a separate warm-up wrk first, so
-- the cost is one request in thousands, the same for both apps.
--
-- done() prints one JSON line (the last line wrk writes): requests/s, p50
-- and p99 latency in microseconds, non-2xx answers, socket errors, and how
-- many connections never got a cookie (then /read and /none were not
-- measured with a session: the run is invalid, except for the app without
-- a session layer, which sets none).

local path = "/inc"
cookie = nil
local answered = false
non2xx = 0
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   if args[1] then path = args[1] end
end

function request()
   if cookie then
      return wrk.format("GET", path, { ["Cookie"] = cookie })
   elseif answered then
      -- No cookie came (the app without a session layer): the route anyway.
      return wrk.format("GET", path)
   end
   return wrk.format("GET", "/inc")
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
   answered = true
   if not cookie then
      local set = headers["set-cookie"] or headers["Set-Cookie"]
      if set then cookie = set:match("^([^;]+)") end
   end
end

function done(summary, latency, requests)
   local bad, cookieless = 0, 0
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("non2xx") or 0)
      if not thread:get("cookie") then cookieless = cookieless + 1 end
   end
   local e = summary.errors
   io.write(string.format(
      '{"requests":%d,"duration_us":%d,"rps":%.1f,"p50_us":%d,"p99_us":%d,' ..
      '"non2xx":%d,"socket_errors":%d,"cookieless":%d}\n',
      summary.requests, summary.duration,
      summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(99),
      bad, e.connect + e.read + e.write + e.timeout, cookieless))
end
