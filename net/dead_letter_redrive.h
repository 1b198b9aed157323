#pragma once
// RedriveDeadLetters: re-sends dead-lettered batches (DeadLetterLog) to the downstream with their
// original Idempotency-Key, one at a time, and records each batch acknowledged with 2xx in the
// log's redriven file so it is not sent again. Batches that fail again stay dead-lettered.
//
// Blocking: runs its own EventLoop on the calling thread until every selected batch has an
//   answer (or an error). Meant for `mailrail dlq redrive`, not for the daemon's loop.
// SendOneByOne is the same machinery for any list of requests (`mailrail quarantine redrive`).

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/result.h"
#include "net/http_client.h"

namespace mailrail::net {

struct RedriveReport {
  std::size_t attempted = 0;
  std::size_t redriven = 0;
  std::vector<std::string> failures;  // "batch_id: reason"
};

// Sends `count` requests one after another (make_request(i) builds the i-th when it is due) and
// calls on_answer(i, result) on the calling thread for each, in order. Blocking.
base::Status SendOneByOne(const HttpClientConfig& http, std::size_t count,
                          const std::function<ClientRequest(std::size_t)>& make_request,
                          const std::function<void(std::size_t, base::Result<ClientResponse>)>& on_answer);

// only_batch_id: empty for every batch not yet redriven.
base::Result<RedriveReport> RedriveDeadLetters(const std::string& dir, const HttpClientConfig& http,
                                               const std::string& path, std::string_view only_batch_id);

}  // namespace mailrail::net
