-- perf.lua: the requests bench/perf.sh has wrk send. A POST of a small
-- email (96 bytes of JSON), as a client of the mail API sends one, with:
--
--   PERF_KEY=<key>        that one key in every request (or none if unset);
--   PERF_KEY_FILE=<file>  the keys of the file, one a line, in turn: one
--                         request per key, then from the top again;
--   PERF_KEY_OFFSET=<n>   with PERF_KEY_FILE: start at the key after the n-th
--                         (modulo the file's length), not at the first;
--   PERF_XFF=1            with PERF_KEY_FILE: each request also says it comes
--                         from a different client address (X-Forwarded-For,
--                         10.x.y.z counted up with the line number), for a
--                         gateway that trusts 127.0.0.1 as its proxy.
--
-- The requests of a key file are formatted once, in init, so that sending
-- one costs wrk no more than the single static request does: wrk shares
-- the machine with the Caddy it measures.
--
-- At the end it writes two tab-separated lines for perf.sh:
--   PERF <req/s> <p50 µs> <p99 µs> <requests> <non-2xx/3xx> <socket errors>
--   LAT  <percentile> <µs> <percentile> <µs> …   (0 is the minimum, 100 the maximum)
wrk.method = "POST"
wrk.path = "/v1/emails"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"from":"billing@example.com","to":["ada@example.org"],"subject":"Invoice 7","text":"Attached."}'

local key = os.getenv("PERF_KEY")
if key ~= nil and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

local key_file = os.getenv("PERF_KEY_FILE")
if key_file ~= nil and key_file ~= "" then
  local prepared, next_request = {}, 1

  function init(args)
    local xff = os.getenv("PERF_XFF") == "1"
    local n = 0
    for line in io.lines(key_file) do
      n = n + 1
      local headers = {}
      for name, value in pairs(wrk.headers) do
        headers[name] = value
      end
      headers["Authorization"] = "Bearer " .. line
      if xff then
        headers["X-Forwarded-For"] = string.format("10.%d.%d.%d",
          math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
      end
      prepared[n] = wrk.format(nil, nil, headers, nil)
    end
    if n == 0 then
      error("perf.lua: no keys in " .. key_file)
    end
    next_request = (tonumber(os.getenv("PERF_KEY_OFFSET") or "0") or 0) % n + 1
  end

  function request()
    local r = prepared[next_request]
    next_request = next_request % #prepared + 1
    return r
  end
end

local percentiles = { 50, 75, 90, 95, 99, 99.5, 99.9, 99.99 }

function done(summary, latency, requests)
  local seconds = summary.duration / 1000000
  local e = summary.errors
  io.write(table.concat({
    "PERF",
    string.format("%.1f", summary.requests / seconds),
    tostring(latency:percentile(50)),
    tostring(latency:percentile(99)),
    tostring(summary.requests),
    tostring(e.status),
    tostring(e.connect + e.read + e.write + e.timeout),
  }, "\t") .. "\n")
  local lat = { "LAT", "0", tostring(latency.min) }
  for _, p in ipairs(percentiles) do
    lat[#lat + 1] = tostring(p)
    lat[#lat + 1] = tostring(latency:percentile(p))
  end
  lat[#lat + 1] = "100"
  lat[#lat + 1] = tostring(latency.max)
  io.write(table.concat(lat, "\t") .. "\n")
end
