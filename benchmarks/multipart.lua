-- wrk script: POST multipart `files` requests; report JSON at the end.
-- usage: wrk -t1 ... -s benchmarks/multipart.lua URL -- FILE [COUNT]
-- FILE is an image, sent COUNT times per request, or a `.list` file naming one image a line:
-- then each request holds the next COUNT of them, wrapping round, a different body per request
-- (every listed image is sent equally often), so a model whose cost depends on the image is
-- timed on a realistic mix. All bodies are built at init.
local prepared = {}  -- formatted requests, one per body
local sent = 0

local function read(path)
  local handle = assert(io.open(path, "rb"))
  local data = handle:read("*all")
  handle:close()
  return { name = path:match("([^/]+)$"), data = data }
end

function init(args)
  local path, count = args[1], tonumber(args[2] or "1")
  local files = {}
  if path:match("%.list$") then
    for line in io.lines(path) do
      if line ~= "" then files[#files + 1] = read(line) end
    end
  else
    files[1] = read(path)
  end
  assert(#files > 0, "no image files listed in " .. path)
  local boundary = "----wrkBoundary7MA4YWxkTrZu0gW"
  for first = 0, #files - 1, count do
    local parts = {}
    for offset = 0, count - 1 do
      local file = files[(first + offset) % #files + 1]
      parts[#parts + 1] = "--" .. boundary .. "\r\n" ..
        'Content-Disposition: form-data; name="files"; filename="' .. offset .. "_" .. file.name ..
        '"\r\n' .. "Content-Type: application/octet-stream\r\n\r\n" .. file.data .. "\r\n"
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
