-- wrk script: POST multipart `files` requests that cycle through many images, a different body
-- per request, so a model whose cost depends on the image is timed on a realistic mix.
-- LIST names one image file a line; body i holds COUNT of them, from the (i * COUNT)th on,
-- wrapping round, so every listed image is sent equally often. All bodies are built at init.
-- Reports the same JSON line at the end as benchmarks/multipart.lua.
-- usage: wrk -t1 ... -s benchmarks/multipart_cycle.lua URL -- LIST [COUNT]
local prepared = {}  -- formatted requests, one per body
local sent = 0

function init(args)
  local list, count = args[1], tonumber(args[2] or "1")
  local files = {}
  for path in io.lines(list) do
    if path ~= "" then
      local handle = assert(io.open(path, "rb"))
      files[#files + 1] = { name = path:match("([^/]+)$"), data = handle:read("*all") }
      handle:close()
    end
  end
  assert(#files > 0, "no image files listed in " .. list)
  local boundary = "----wrkBoundary7MA4YWxkTrZu0gW"
  for first = 0, #files - 1, count do
    local parts = {}
    for offset = 0, count - 1 do
      local file = files[(first + offset) % #files + 1]
      parts[#parts + 1] = "--" .. boundary .. "\r\n" ..
        'Content-Disposition: form-data; name="files"; filename="' .. file.name .. '"\r\n' ..
        "Content-Type: application/octet-stream\r\n\r\n" .. file.data .. "\r\n"
    end
    local body = table.concat(parts) .. "--" .. boundary .. "--\r\n"
    prepared[#prepared + 1] = wrk.format("POST", nil, {
      ["Content-Type"] = "multipart/form-data; boundary=" .. boundary,
      ["Content-Length"] = tostring(#body),
    }, body)
  end
end

function request()
  sent = sent % #prepared + 1
  return prepared[sent]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout + e.status,
    e.status, latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean))
end
