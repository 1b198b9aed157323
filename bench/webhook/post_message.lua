-- wrk script: POST /ingest with a ~4 KB raw RFC 5322 message whose Message-ID is unique per
-- request (thread id + counter), as message/rfc822.
local counter = 0
local body_tail
local threads_started = 0

-- Runs in the main Lua state once per wrk thread: gives each thread its own id.
function setup(thread)
  threads_started = threads_started + 1
  thread:set("thread_id", threads_started)
end

function init(args)
  local line = string.rep("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod. ", 1) .. "\r\n"
  body_tail = "From: Billing <billing@vendor.example>\r\n" ..
              "To: ap@corp.example\r\n" ..
              "Subject: Rechnung Nr. 2026-118\r\n" ..
              "Date: Fri, 01 May 2026 08:00:00 +0000\r\n" ..
              "MIME-Version: 1.0\r\n" ..
              "Content-Type: text/plain; charset=utf-8\r\n\r\n" ..
              string.rep(line, 52)
end

function request()
  counter = counter + 1
  local body = "Message-ID: <" .. thread_id .. "." .. os.time() .. "." .. counter .. "@bench.mailrail>\r\n" .. body_tail
  return wrk.format("POST", "/ingest", {["Content-Type"] = "message/rfc822"}, body)
end
