-- wrk script for bench/serve.py: TF Serving REST predict requests, one user's history each.
--
--   wrk -t T -c C -d 20s -s bench/wrk_predict.lua URL -- IDS_FILE PATH HISTORY K USERS SEED
--
-- Each thread builds USERS request bodies from the item ids in IDS_FILE (one per line):
-- histories of HISTORY distinct ids drawn with a fixed seed (SEED + thread number), then
-- cycles through them. Status codes are counted per thread; done() prints one JSON line
-- (between the markers) with requests, non-2xx answers, socket errors and latency
-- percentiles in ms.

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("number", counter)
   table.insert(threads, thread)
end

local function json_string(text)
   return '"' .. text:gsub('\\', '\\\\'):gsub('"', '\\"') .. '"'
end

function init(args)
   local ids = {}
   for line in io.lines(args[1]) do
      if #line > 0 then table.insert(ids, line) end
   end
   path, history, k, users = args[2], tonumber(args[3]), tonumber(args[4]), tonumber(args[5])
   math.randomseed(tonumber(args[6]) + number)
   bodies = {}
   for u = 1, users do
      local chosen, picked = {}, {}
      while #chosen < math.min(history, #ids) do
         local i = math.random(#ids)
         if not picked[i] then
            picked[i] = true
            table.insert(chosen, json_string(ids[i]))
         end
      end
      bodies[u] = '{"inputs":{"history":[[' .. table.concat(chosen, ",") .. ']],"k":' .. k .. '}}'
   end
   headers = {["Content-Type"] = "application/json"}
   statuses = {}
   next_body = number
end

function request()
   next_body = next_body % #bodies + 1
   return wrk.format("POST", path, headers, bodies[next_body])
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local codes, parts = {}, {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         codes[status] = (codes[status] or 0) + count
      end
   end
   local not_2xx = 0
   for status, count in pairs(codes) do
      table.insert(parts, '"' .. status .. '":' .. count)
      if status < 200 or status > 299 then not_2xx = not_2xx + count end
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_s":%.3f,"not_2xx":%d,"socket_errors":%d,"timeouts":%d,' ..
      '"status_codes":{%s},"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f}\n',
      summary.requests, summary.duration / 1e6, not_2xx, e.connect + e.read + e.write, e.timeout,
      table.concat(parts, ","), latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000))
end
