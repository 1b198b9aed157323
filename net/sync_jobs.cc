#include "net/sync_jobs.h"

#include <openssl/rand.h>

#include <array>
#include <map>

#include <fmt/format.h>

#include "engine/base/counters.h"
#include "stages/record_json.h"

namespace mailrail::net {
namespace {

using storage::SyncJob;
using storage::SyncJobKind;
using storage::SyncJobStatus;

// A random (version 4) UUID, like the replaced service's job and task ids.
std::string NewUuid() {
  std::array<unsigned char, 16> b{};
  MR_CHECK(RAND_bytes(b.data(), static_cast<int>(b.size())) == 1) << "RAND_bytes failed";
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);
  std::string hex;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) hex += '-';
    hex += fmt::format("{:02x}", b[i]);
  }
  return hex;
}

double ProgressPercent(const SyncJob& job) {
  if (job.status == SyncJobStatus::kCompleted) return 100.0;
  if (job.total == 0) return 0.0;
  return std::min(100.0, 100.0 * static_cast<double>(job.parsed + job.failed) / static_cast<double>(job.total));
}

void AppendTime(std::int64_t ms, std::string& out) {
  if (ms == 0) {
    out += "null";
    return;
  }
  out += '"';
  stages::AppendRfc3339(ms, out);
  out += '"';
}

ControlReply NotFound(std::string_view detail) {
  std::string body = "{\"detail\":";
  stages::AppendJsonString(detail, body);
  body += "}";
  return {404, std::move(body)};
}

}  // namespace

void AppendSyncJobJson(const SyncJob& job, std::string& out) {
  out += "{\"job_id\":";
  stages::AppendJsonString(job.job_id, out);
  out += ",\"user_id\":";
  stages::AppendJsonString(job.user_id, out);
  fmt::format_to(std::back_inserter(out),
                 ",\"kind\":\"{}\",\"status\":\"{}\",\"progress\":{:.1f},\"total_emails\":{},\"processed_emails\":{},"
                 "\"parsed_transactions\":{},\"failed_emails\":{},\"months\":{},\"created_at\":",
                 storage::SyncJobKindName(job.kind), storage::SyncJobStatusName(job.status), ProgressPercent(job),
                 job.total, job.processed, job.parsed, job.failed, job.months);
  AppendTime(job.created_ms, out);
  out += ",\"updated_at\":";
  AppendTime(job.updated_ms, out);
  out += ",\"completed_at\":";
  AppendTime(job.completed_ms, out);
  out += ",\"error\":";
  if (job.error.empty()) {
    out += "null";
  } else {
    stages::AppendJsonString(job.error, out);
  }
  out += '}';
}

SyncJobManager::SyncJobManager(EventLoop* loop, storage::SyncJobStore* store, std::vector<MailboxSyncSource*> sources,
                               std::function<std::uint64_t()> terminal_durable_lsn, SyncJobsConfig config,
                               SyncJobLog log)
    : loop_(loop),
      store_(store),
      sources_(std::move(sources)),
      terminal_durable_lsn_(std::move(terminal_durable_lsn)),
      config_(config),
      log_(std::move(log)) {}

SyncJobManager::~SyncJobManager() { *alive_ = false; }

MailboxSyncSource* SyncJobManager::SourceOf(std::string_view user_id) const {
  for (MailboxSyncSource* source : sources_) {
    if (source->HasMailbox(user_id)) return source;
  }
  return nullptr;
}

SyncJob SyncJobManager::NewJob(std::string_view user_id, SyncJobKind kind, unsigned months) {
  SyncJob job;
  job.job_id = NewUuid();
  job.user_id = std::string(user_id);
  job.kind = kind;
  job.months = months;
  job.created_ms = job.updated_ms = base::UnixMs();
  return job;
}

void SyncJobManager::Save(std::span<const SyncJob> jobs) {
  if (auto status = store_->SaveAll(jobs); !status) {
    // The jobs go on in memory; a restart before the next successful save resumes older states.
    log_("sync_job_save_failed", {{"error", status.error().message}});
  }
}

void SyncJobManager::Start() {
  std::vector<SyncJob> changed;
  for (const auto& [user, jobs] : store_->jobs_by_user()) {
    if (jobs.empty() || !jobs.back().is_active()) continue;
    SyncJob job = jobs.back();
    MailboxSyncSource* source = SourceOf(user);
    if (source == nullptr) {
      job.status = SyncJobStatus::kFailed;
      job.error = "the mailbox is no longer configured";
      job.updated_ms = job.completed_ms = base::UnixMs();
      changed.push_back(std::move(job));
      continue;
    }
    if (job.kind == SyncJobKind::kBackfill) {
      source->StartBackfill(user, job.months, /*resume=*/true);
    } else {
      source->SyncNow(user);
    }
    log_("sync_job_resumed", {{"job_id", job.job_id}, {"user_id", user}, {"kind", std::string(SyncJobKindName(job.kind))}});
  }
  Save(changed);
  Tick();
}

ControlReply SyncJobManager::StartBackfill(std::string_view user_id, unsigned months) {
  MailboxSyncSource* source = SourceOf(user_id);
  if (source == nullptr) return NotFound("no mailbox is configured for this user");
  if (const SyncJob* latest = store_->Latest(user_id); latest != nullptr && latest->is_active()) {
    std::string body = "{\"detail\":\"a sync job for this user is already running\",\"job_id\":";
    stages::AppendJsonString(latest->job_id, body);
    body += "}";
    return {409, std::move(body)};
  }
  const SyncJob job = NewJob(user_id, SyncJobKind::kBackfill, months);
  // The source first (a fresh backfill resets its checkpoint durably), then the job: a crash in
  // between leaves no job and a folder that fetches its window again, never a job that skips it.
  source->StartBackfill(user_id, months, /*resume=*/false);
  if (auto status = store_->Save(job); !status) {
    std::string body = "{\"detail\":";
    stages::AppendJsonString("cannot record the job: " + status.error().message, body);
    body += "}";
    return {500, std::move(body)};
  }
  log_("sync_job_started", {{"job_id", job.job_id}, {"user_id", job.user_id}, {"kind", "backfill"},
                            {"months", std::to_string(months)}});
  std::string body = "{\"message\":\"Email sync started\",\"task_id\":";
  stages::AppendJsonString(job.job_id, body);
  body += ",\"user_id\":";
  stages::AppendJsonString(job.user_id, body);
  body += fmt::format(",\"months\":{}}}", months);
  return {200, std::move(body)};
}

ControlReply SyncJobManager::Status(std::string_view user_id) const {
  const SyncJob* latest = store_->Latest(user_id);
  if (latest == nullptr) {
    return NotFound(SourceOf(user_id) == nullptr ? "no mailbox is configured for this user"
                                                 : "no sync job found for this user");
  }
  std::string body;
  AppendSyncJobJson(*latest, body);
  return {200, std::move(body)};
}

ControlReply SyncJobManager::History(std::string_view user_id, std::size_t limit) const {
  const auto jobs = store_->History(user_id, limit);
  if (jobs.empty() && SourceOf(user_id) == nullptr) return NotFound("no mailbox is configured for this user");
  std::string body = "{\"user_id\":";
  stages::AppendJsonString(user_id, body);
  body += ",\"jobs\":[";
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    if (i > 0) body += ',';
    AppendSyncJobJson(*jobs[i], body);
  }
  body += "]}";
  return {200, std::move(body)};
}

ControlReply SyncJobManager::Stats() const {
  std::map<SyncJobStatus, std::uint64_t> by_status;
  std::uint64_t jobs = 0, users = 0, total = 0, processed = 0, parsed = 0, failed = 0;
  for (const auto& [user, list] : store_->jobs_by_user()) {
    if (!list.empty()) ++users;
    for (const SyncJob& job : list) {
      ++jobs;
      ++by_status[job.status];
      total += job.total;
      processed += job.processed;
      parsed += job.parsed;
      failed += job.failed;
    }
  }
  return {200, fmt::format(R"({{"total_jobs":{},"users":{},"by_status":{{"pending":{},"processing":{},"completed":{},)"
                           R"("failed":{}}},"total_emails":{},"processed_emails":{},"parsed_transactions":{},)"
                           R"("failed_emails":{}}})",
                           jobs, users, by_status[SyncJobStatus::kPending], by_status[SyncJobStatus::kProcessing],
                           by_status[SyncJobStatus::kCompleted], by_status[SyncJobStatus::kFailed], total, processed,
                           parsed, failed)};
}

bool SyncJobManager::Update(SyncJob& job, MailboxSyncSource* source) {
  const MailboxSyncProgress p = source->Progress(job.user_id, terminal_durable_lsn_());
  const SyncJob before = job;
  if (p.started) {
    job.total = p.found;
    job.processed = p.durable;
    job.parsed = p.settled;
    job.failed = p.failed;
    job.status = p.done ? SyncJobStatus::kCompleted : SyncJobStatus::kProcessing;
  }
  const bool changed = job.status != before.status || job.total != before.total ||
                       job.processed != before.processed || job.parsed != before.parsed || job.failed != before.failed;
  if (changed) job.updated_ms = base::UnixMs();
  if (job.status == SyncJobStatus::kCompleted && before.status != SyncJobStatus::kCompleted) {
    job.completed_ms = job.updated_ms;
    log_("sync_job_completed", {{"job_id", job.job_id}, {"user_id", job.user_id},
                                {"kind", std::string(SyncJobKindName(job.kind))}, {"total", std::to_string(job.total)},
                                {"processed", std::to_string(job.processed)}, {"failed", std::to_string(job.failed)}});
  }
  return changed;
}

void SyncJobManager::Tick() {
  std::vector<SyncJob> changed;
  const std::int64_t now = base::UnixMs();
  const std::int64_t interval_ms = std::chrono::duration_cast<std::chrono::milliseconds>(config_.incremental_interval).count();
  std::vector<std::string> due;
  for (const auto& [user, jobs] : store_->jobs_by_user()) {
    if (jobs.empty()) continue;
    const SyncJob& latest = jobs.back();
    MailboxSyncSource* source = SourceOf(user);
    if (source == nullptr) continue;
    if (latest.is_active()) {
      SyncJob job = latest;
      if (Update(job, source)) changed.push_back(std::move(job));
      continue;
    }
    bool backfilled = false;
    for (const SyncJob& job : jobs) backfilled = backfilled || (job.kind == SyncJobKind::kBackfill && job.status == SyncJobStatus::kCompleted);
    if (backfilled && now - latest.created_ms >= interval_ms) due.push_back(user);
  }
  for (const std::string& user : due) {
    SyncJob job = NewJob(user, SyncJobKind::kIncremental, 0);
    SourceOf(user)->SyncNow(user);
    log_("sync_job_started", {{"job_id", job.job_id}, {"user_id", user}, {"kind", "incremental"}});
    changed.push_back(std::move(job));
  }
  Save(changed);
  std::weak_ptr<bool> alive = alive_;
  loop_->RunAfter(config_.progress_interval, [this, alive] {
    if (!alive.expired()) Tick();
  });
}

}  // namespace mailrail::net
