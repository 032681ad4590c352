-- wrk script: POST real images in turn, count answers whose class_index matches the label.
--
--   wrk -t C -c C -d 10s --timeout 30s --latency -s bench/wrk/post_images.lua URL -- LIST MODE C
--
-- LIST: lines "path<TAB>label<TAB>content-type" (written by bench/http.py).
-- MODE: "raw" (the image is the body, Content-Type image/*) or "multipart" (field "file").
-- THREADS: the -t value; thread i posts images i, i+THREADS, ... (together: every image), so
-- each thread loads only its share (wrk initialises threads one after another while the first
-- ones already send load: a long init would burn CPU inside the measured window).
-- Run with one connection per thread (-t equal to -c): requests and responses on a connection
-- alternate, so the label of the last request sent is the one the next response answers.
-- done() prints one line "WRKJSON {...}" with throughput, latency percentiles (microseconds),
-- errors and the label check; bench/http.py parses it.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local requests_ = {}
local labels = {}
local next_i = 1
local pending = -1
checked = 0
correct = 0
non200 = 0
unparsed = 0

local BOUNDARY = "elfbenchboundary7MA4YWxkTrZu0gW"

local function read_file(path)
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   return data
end

local function multipart(data, path, ctype)
   local name = path:match("([^/]+)$")
   local body = "--" .. BOUNDARY .. "\r\n"
      .. 'Content-Disposition: form-data; name="file"; filename="' .. name .. '"\r\n'
      .. "Content-Type: " .. ctype .. "\r\n\r\n"
      .. data .. "\r\n--" .. BOUNDARY .. "--\r\n"
   return body, "multipart/form-data; boundary=" .. BOUNDARY
end

function init(args)
   local list, mode, nthreads = args[1], args[2] or "raw", tonumber(args[3] or "1")
   local entries = {}
   for line in io.lines(list) do
      local path, label, ctype = line:match("^([^\t]+)\t(%d+)\t([^\t]+)$")
      if path then
         table.insert(entries, { path, tonumber(label), ctype })
      end
   end
   assert(#entries > 0, "no images in " .. list)
   -- Fewer images than threads: thread i takes image i mod #entries.
   local share = math.min(nthreads, #entries)
   for n, e in ipairs(entries) do
      if (n - 1) % share == tid % share then
         local body, content_type = read_file(e[1]), e[3]
         if mode == "multipart" then
            body, content_type = multipart(body, e[1], e[3])
         end
         local headers = { ["Content-Type"] = content_type }
         table.insert(requests_, wrk.format("POST", nil, headers, body))
         table.insert(labels, e[2])
      end
   end
end

function request()
   local i = next_i
   next_i = next_i % #requests_ + 1
   pending = labels[i]
   return requests_[i]
end

function response(status, headers, body)
   if status ~= 200 then
      non200 = non200 + 1
      return
   end
   local c = body:match('"class_index"%s*:%s*(%d+)')
   if c == nil then
      unparsed = unparsed + 1
      return
   end
   checked = checked + 1
   if tonumber(c) == pending then
      correct = correct + 1
   end
end

function done(summary, latency, requests)
   local sums = { checked = 0, correct = 0, non200 = 0, unparsed = 0 }
   for _, t in ipairs(threads) do
      for k, _ in pairs(sums) do
         sums[k] = sums[k] + (t:get(k) or 0)
      end
   end
   local e = summary.errors
   local parts = {
      string.format('"requests":%d', summary.requests),
      string.format('"duration_us":%d', summary.duration),
      string.format('"bytes":%d', summary.bytes),
      string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
         e.connect, e.read, e.write, e.status, e.timeout),
      string.format('"latency_us":{"mean":%.1f,"stdev":%.1f,"min":%d,"max":%d,'
         .. '"p50":%d,"p90":%d,"p99":%d,"p999":%d}',
         latency.mean, latency.stdev, latency.min, latency.max,
         latency:percentile(50), latency:percentile(90), latency:percentile(99),
         latency:percentile(99.9)),
      string.format('"checked":%d,"correct":%d,"non200":%d,"unparsed":%d',
         sums.checked, sums.correct, sums.non200, sums.unparsed),
   }
   io.write("WRKJSON {" .. table.concat(parts, ",") .. "}\n")
end
