-- perf.lua: the request bench/perf.sh has wrk send. A POST of a small email
-- (96 bytes of JSON), as a client of the mail API sends one, with the key
-- from the PERF_KEY environment variable when it is set.
--
-- At the end it writes one line for perf.sh, tab-separated:
--   PERF <req/s> <p50 µs> <p99 µs> <requests> <non-2xx/3xx> <socket errors>
wrk.method = "POST"
wrk.path = "/v1/emails"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"from":"billing@example.com","to":["ada@example.org"],"subject":"Invoice 7","text":"Attached."}'

local key = os.getenv("PERF_KEY")
if key ~= nil and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

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
end
