#include "net/graph_api.h"

#include <gtest/gtest.h>

#include <deque>
#include <random>

namespace mailrail::net {
namespace {

using std::chrono::milliseconds;

TEST(GraphDeltaPageTest, NextLinkPageWithItemsAndRemovals) {
  auto page = ParseGraphDeltaPage(R"({"@odata.context":"x",
    "@odata.nextLink":"https://graph.microsoft.com/v1.0/users/u/mailFolders/inbox/messages/delta?$skiptoken=abc",
    "value":[{"id":"AAA=","subject":"hi \"there\"","hasAttachments":true},
             {"id":"BBB","@removed":{"reason":"deleted"}},
             {"id":"CCC","hasAttachments":false,"body":{"content":"x"}}]})");
  ASSERT_TRUE(page) << page.error().message;
  EXPECT_EQ(page->next_link, "https://graph.microsoft.com/v1.0/users/u/mailFolders/inbox/messages/delta?$skiptoken=abc");
  EXPECT_TRUE(page->delta_link.empty());
  ASSERT_EQ(page->items.size(), 3u);
  EXPECT_EQ(page->items[0].id, "AAA=");
  EXPECT_TRUE(page->items[0].has_attachments);
  EXPECT_FALSE(page->items[0].removed);
  EXPECT_EQ(page->items[0].json, R"({"id":"AAA=","subject":"hi \"there\"","hasAttachments":true})");
  EXPECT_TRUE(page->items[1].removed);
  EXPECT_TRUE(page->items[1].json.empty());
  EXPECT_FALSE(page->items[2].has_attachments);
}

TEST(GraphDeltaPageTest, LastPageCarriesTheDeltaLink) {
  auto page = ParseGraphDeltaPage(R"({"@odata.deltaLink":"https://g/v1.0/d?$deltatoken=z","value":[]})");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->delta_link, "https://g/v1.0/d?$deltatoken=z");
  EXPECT_TRUE(page->items.empty());
}

TEST(GraphDeltaPageTest, RejectsWhatIsNotAPage) {
  EXPECT_FALSE(ParseGraphDeltaPage("<html>gateway timeout</html>"));
  EXPECT_FALSE(ParseGraphDeltaPage(R"({"value":[]})"));  // neither link
  EXPECT_FALSE(ParseGraphDeltaPage(R"({"@odata.nextLink":"a","@odata.deltaLink":"b","value":[]})"));
  EXPECT_FALSE(ParseGraphDeltaPage(R"({"@odata.deltaLink":"b"})"));  // no value
  EXPECT_FALSE(ParseGraphDeltaPage(R"({"@odata.deltaLink":"b","value":[{"subject":"no id"}]})"));
  EXPECT_FALSE(ParseGraphDeltaPage(R"({"@odata.deltaLink":"b","value":[42]})"));
}

TEST(GraphErrorCodeTest, GraphAndOAuthShapes) {
  EXPECT_EQ(GraphErrorCode(R"({"error":{"code":"syncStateNotFound","message":"gone"}})"), "syncStateNotFound");
  EXPECT_EQ(GraphErrorCode(R"({"error":"invalid_client","error_description":"AADSTS7000215"})"), "invalid_client");
  EXPECT_EQ(GraphErrorCode("Service Unavailable"), "");
  EXPECT_EQ(GraphErrorCode(""), "");
}

TEST(GraphTokenResponseTest, NumberOrStringExpiry) {
  auto token = ParseGraphTokenResponse(R"({"token_type":"Bearer","expires_in":3599,"access_token":"eyJ0"})");
  ASSERT_TRUE(token);
  EXPECT_EQ(token->access_token, "eyJ0");
  EXPECT_EQ(token->expires_in, std::chrono::seconds(3599));
  auto v1 = ParseGraphTokenResponse(R"({"expires_in":"3600","access_token":"t"})");
  ASSERT_TRUE(v1);
  EXPECT_EQ(v1->expires_in, std::chrono::seconds(3600));
  EXPECT_FALSE(ParseGraphTokenResponse(R"({"expires_in":3600})"));
  EXPECT_FALSE(ParseGraphTokenResponse(R"({"expires_in":0,"access_token":"t"})"));
  EXPECT_FALSE(ParseGraphTokenResponse(R"({"expires_in":"soon","access_token":"t"})"));
  EXPECT_FALSE(ParseGraphTokenResponse("[]"));
}

TEST(RetryAfterTest, SecondsAndHttpDates) {
  constexpr std::int64_t kNow = 1445412480000;  // Wed, 21 Oct 2015 07:28:00 GMT
  EXPECT_EQ(ParseRetryAfter("120", kNow), milliseconds(120000));
  EXPECT_EQ(ParseRetryAfter(" 0 ", kNow), milliseconds(0));
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:28:30 GMT", kNow), milliseconds(30000));
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:27:00 GMT", kNow), milliseconds(0));  // in the past
  EXPECT_FALSE(ParseRetryAfter("", kNow));
  EXPECT_FALSE(ParseRetryAfter("-5", kNow));
  EXPECT_FALSE(ParseRetryAfter("1.5", kNow));
  EXPECT_FALSE(ParseRetryAfter("soon", kNow));
  EXPECT_FALSE(ParseRetryAfter("99999999999", kNow));
}

TEST(UrlEncodeTest, KeepsUnreservedOnly) {
  EXPECT_EQ(UrlEncode("a-b_c.d~e"), "a-b_c.d~e");
  EXPECT_EQ(UrlEncode("bob@corp.example"), "bob%40corp.example");
  EXPECT_EQ(UrlEncode("receivedDateTime ge 2026-01-01T00:00:00Z"), "receivedDateTime%20ge%202026-01-01T00%3A00%3A00Z");
  EXPECT_EQ(UrlEncode("s3cr+t/="), "s3cr%2Bt%2F%3D");
}

TEST(GraphRequestBudgetTest, StartsWithTheWholeBudgetThenWaits) {
  const auto t0 = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  GraphRequestBudget budget(5, milliseconds(1000), t0);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(budget.TryTake(t0));
  EXPECT_FALSE(budget.TryTake(t0));
  const milliseconds wait = budget.WaitFor(t0);
  EXPECT_GE(wait, milliseconds(1000));  // the 5 leave the window only after a whole window
  EXPECT_LE(wait, milliseconds(1100));  // plus at most one slot
  EXPECT_FALSE(budget.TryTake(t0 + wait - milliseconds(1)));
  EXPECT_TRUE(budget.TryTake(t0 + wait));
}

// The property Graph's limit needs: under any schedule of attempts, no window of `window` ever
// holds more than `limit` granted requests (a token bucket would allow twice that).
TEST(GraphRequestBudgetTest, NeverMoreThanTheLimitInAnyWindow) {
  const auto t0 = std::chrono::steady_clock::time_point{};
  constexpr std::size_t kLimit = 50;
  const milliseconds window(600);
  GraphRequestBudget budget(kLimit, window, t0);
  std::mt19937 random(7);
  std::deque<std::chrono::steady_clock::time_point> granted;
  auto now = t0;
  std::size_t total = 0;
  for (int step = 0; step < 20000; ++step) {
    now += std::chrono::microseconds(random() % 3000);
    if (!budget.TryTake(now)) continue;
    ++total;
    granted.push_back(now);
    while (now - granted.front() >= window) granted.pop_front();
    ASSERT_LE(granted.size(), kLimit) << "at step " << step;
  }
  // And it does not give much away: over ~30 s, close to limit per window.
  const double windows = std::chrono::duration<double>(now - t0) / std::chrono::duration<double>(window);
  EXPECT_GT(static_cast<double>(total), 0.85 * kLimit * windows);
}

}  // namespace
}  // namespace mailrail::net
