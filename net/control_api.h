#pragma once
// ControlApi: the HTTP control routes of the replaced Python service, on an HttpServer:
//   POST /session/start   {"polling_mode": "scheduled"|"manual", "polling_interval": 300,
//                          "enable_webhook": true}   (every field optional)
//   POST /session/stop    {"reason": "..."}          (optional body)
//   GET  /session/status
//   POST /polling/trigger
//   POST /rules/reload    reloads the filter rule file like SIGHUP: 200 {"status":"reloaded",
//                         "version":V,"rules":N,...} once the new set is compiled and queued (every
//                         message ingested after the answer is judged by it), or 422
//                         {"status":"rejected","error":"FILE:LINE: rule 'ID': ...","version":OLD}
//                         with the old rules still in force
//   POST /api/v1/email-sync/start/{user_id}?months=6   (months 1..120, default 6)
//   GET  /api/v1/email-sync/status/{user_id}
//   GET  /api/v1/email-sync/history/{user_id}?limit=10 (limit 1..1000, default 10)
//   GET  /api/v1/email-sync/stats
//                         per-mailbox sync jobs (net::SyncJobManager); user_id is percent-decoded
//   GET  /health          200 {"status":"ok"} or 503 {"status":"unhealthy","reasons":[...]}
//   GET  /metrics         Prometheus text format 0.0.4
// The daemon implements ControlService and decides the JSON of each answer; ControlApi does the
// HTTP side: request parsing and validation (400 with a reason), optional bearer-token auth (401),
// and the metrics of the net layer appended after the service's own.
//
// Threading: handlers run on the server's loop thread and call the service there; a service must
//   answer quickly (read atomics or a snapshot; never block on the pipeline). Work that takes
//   longer (compiling rules) is answered asynchronously: ReloadRules gets a reply callback that
//   the service calls exactly once, from any thread; ControlApi posts the answer to the loop.
//   Metrics sources added with AddMetrics run on the loop thread as well.
// Lifetime: the service and every metrics source outlive the server.

#include <functional>
#include <string>
#include <vector>

#include "net/http_server.h"

namespace mailrail::net {

struct SessionStartRequest {
  std::string polling_mode = "scheduled";
  int polling_interval_seconds = 300;
  bool enable_webhook = true;
};

struct ControlReply {
  int status = 200;
  std::string json;  // response body (application/json)
};

struct HealthReport {
  std::vector<std::string> reasons;  // empty: healthy
};

class ControlService {
 public:
  virtual ~ControlService() = default;
  virtual ControlReply StartSession(const SessionStartRequest& request) = 0;
  virtual ControlReply StopSession(std::string_view reason) = 0;
  virtual ControlReply SessionStatus() = 0;
  virtual ControlReply TriggerPolling() = 0;
  // Reloads the filter rules off the loop thread and calls `reply` once with the outcome.
  virtual void ReloadRules(std::function<void(ControlReply)> reply) = 0;
  // Sync jobs; ControlApi has validated user_id (non-empty), months and limit.
  virtual ControlReply StartSyncJob(std::string_view user_id, unsigned months) = 0;
  virtual ControlReply SyncJobStatus(std::string_view user_id) = 0;
  virtual ControlReply SyncJobHistory(std::string_view user_id, std::size_t limit) = 0;
  virtual ControlReply SyncJobStats() = 0;
  virtual HealthReport Health() = 0;
  // Prometheus text for the daemon's own metrics (pipeline counters, WAL, forward).
  virtual std::string Metrics() = 0;
};

struct ControlApiConfig {
  std::string bearer_token;  // empty: no authentication (bind to loopback then)
};

class ControlApi {
 public:
  ControlApi(ControlService* service, ControlApiConfig config);
  // Appends Prometheus text to the /metrics answer (e.g. AppendHttpServerMetrics).
  void AddMetrics(std::function<void(std::string&)> source);
  void Install(HttpServer& server);

 private:
  bool Authorized(const HttpRequest& request) const;
  void Answer(Responder responder, const ControlReply& reply) const;

  ControlService* service_;
  ControlApiConfig config_;
  std::vector<std::function<void(std::string&)>> metrics_;
};

// Prometheus text for an HttpServer's counters, labelled with `server` (e.g. "ingest").
void AppendHttpServerMetrics(std::string& out, std::string_view server, const HttpServerStats& stats);

}  // namespace mailrail::net
