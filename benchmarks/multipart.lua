-- wrk script: POST the given file COUNT times as multipart `files` parts; report JSON at the end.
-- usage: wrk ... -s benchmarks/multipart.lua URL -- FILE [COUNT]
local request_bytes

function init(args)
  local path, count = args[1], tonumber(args[2] or "1")
  local handle = assert(io.open(path, "rb"))
  local data = handle:read("*all")
  handle:close()
  local name = path:match("([^/]+)$")
  local boundary = "----wrkBoundary7MA4YWxkTrZu0gW"
  local parts = {}
  for i = 1, count do
    parts[#parts + 1] = "--" .. boundary .. "\r\n" ..
      'Content-Disposition: form-data; name="files"; filename="' .. i .. "_" .. name .. '"\r\n' ..
      "Content-Type: application/octet-stream\r\n\r\n" .. data .. "\r\n"
  end
  local body = table.concat(parts) .. "--" .. boundary .. "--\r\n"
  request_bytes = wrk.format("POST", nil, {
    ["Content-Type"] = "multipart/form-data; boundary=" .. boundary,
    ["Content-Length"] = tostring(#body),
  }, body)
end

function request()
  return request_bytes
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout + e.status,
    e.status, latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean))
end
