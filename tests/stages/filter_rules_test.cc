#include "stages/filter_rules.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/stages/filter_test_util.h"

namespace mailrail::stages {
namespace {

using testing::MessageFactory;

std::shared_ptr<const RuleSet> MustParse(std::string_view text) {
  auto rules = RuleSet::Parse(text, "test.toml");
  EXPECT_TRUE(rules.has_value()) << (rules.has_value() ? "" : rules.error().message);
  return rules.has_value() ? rules.value() : nullptr;
}

// Evaluates and returns the ids of the fired rules/thresholds.
struct Evaluated {
  FilterDecision decision;
  std::vector<std::string> fired;
  std::vector<std::string> labels;
  bool Fired(std::string_view id) const { return std::find(fired.begin(), fired.end(), id) != fired.end(); }
};

Evaluated Eval(const RuleSet& rules, const Message& m) {
  FilterScratch scratch;
  EXPECT_TRUE(scratch.Rebind(rules).has_value());
  Evaluated out;
  rules.Evaluate(m, scratch, out.decision);
  for (auto r : out.decision.fired) out.fired.push_back(rules.rule_id(r));
  for (auto l : out.decision.labels) out.labels.push_back(rules.label(l));
  return out;
}

TEST(FilterRulesTest, SenderAddressAndDomainLists) {
  auto rules = MustParse(R"(
[[rule]]
id = "allow.boss"
kind = "sender"
addresses = ["Boss@Corp.example"]
action = "accept"
[[rule]]
id = "block.spammy"
kind = "sender"
domains = ["spammy.example"]
action = "drop"
)");
  MessageFactory f;
  Message& boss = f.Make("hi");
  MessageFactory::SetFrom(boss, "boss@corp.EXAMPLE");
  Message& sub = f.Make("hi");
  MessageFactory::SetFrom(sub, "x@mail.Spammy.example");
  Message& other = f.Make("hi");
  MessageFactory::SetFrom(other, "x@notspammy.example");
  EXPECT_TRUE(Eval(*rules, boss).Fired("allow.boss"));
  EXPECT_EQ(Eval(*rules, boss).decision.action, FilterAction::kAccept);
  EXPECT_EQ(Eval(*rules, sub).decision.action, FilterAction::kDrop);
  EXPECT_TRUE(Eval(*rules, other).fired.empty());
}

TEST(FilterRulesTest, HeaderPresenceAbsenceAndRegex) {
  auto rules = MustParse(R"(
[[rule]]
id = "h.list"
kind = "header"
header = "list-id"
present = true
labels = ["list"]
[[rule]]
id = "h.nodate"
kind = "header"
header = "Date"
present = false
score = 2
[[rule]]
id = "h.mailer"
kind = "header"
header = "X-Mailer"
regex = 'bulk\s*mailer'
action = "quarantine"
)");
  MessageFactory f;
  Message& a = f.Make("s", "", {{"List-ID", "<dev.lists.example>"}, {"Date", "Mon"}, {"X-Mailer", "Outlook"}});
  Message& b = f.Make("s", "", {{"x-mailer", "Super BULK  Mailer 2.0"}});
  const Evaluated ea = Eval(*rules, a), eb = Eval(*rules, b);
  EXPECT_EQ(ea.fired, (std::vector<std::string>{"h.list"}));
  EXPECT_EQ(ea.decision.action, FilterAction::kLabel);
  EXPECT_EQ(ea.labels, (std::vector<std::string>{"list"}));
  EXPECT_EQ(eb.fired, (std::vector<std::string>{"h.nodate", "h.mailer"}));
  EXPECT_EQ(eb.decision.action, FilterAction::kQuarantine);
  EXPECT_DOUBLE_EQ(eb.decision.score, 2.0);
}

TEST(FilterRulesTest, SubjectBodyAndTextScopesInOneScan) {
  auto rules = MustParse(R"(
[[rule]]
id = "s.kw"
kind = "subject"
keywords = ["invoice"]
score = 1
[[rule]]
id = "b.kw"
kind = "body"
keywords = ["invoice"]
score = 10
[[rule]]
id = "t.word"
kind = "text"
words = ["free"]
score = 100
[[rule]]
id = "b.re"
kind = "body"
regex = 'order\s+#\d{4,}'
score = 1000
[[rule]]
id = "s.case"
kind = "subject"
regex = 'ADV'
case_sensitive = true
score = 10000
)");
  MessageFactory f;
  // "invoice" in the subject only: the body rule must not fire even though the pattern matched.
  const Evaluated subject_only = Eval(*rules, f.Make("Your INVOICE", "nothing here"));
  EXPECT_EQ(subject_only.fired, (std::vector<std::string>{"s.kw"}));
  const Evaluated body_only = Eval(*rules, f.Make("hello", "see invoice, order  #12345"));
  EXPECT_EQ(body_only.fired, (std::vector<std::string>{"b.kw", "b.re"}));
  // Whole words: "freedom" is not "free"; the text scope covers subject and body.
  EXPECT_TRUE(Eval(*rules, f.Make("freedom", "")).fired.empty());
  EXPECT_TRUE(Eval(*rules, f.Make("x", "it is FREE!")).Fired("t.word"));
  EXPECT_TRUE(Eval(*rules, f.Make("adv: x", "")).fired.empty());
  EXPECT_DOUBLE_EQ(Eval(*rules, f.Make("ADV: free invoice", "invoice")).decision.score, 10111.0);
}

TEST(FilterRulesTest, SizeAttachmentAndAuthRules) {
  auto rules = MustParse(R"(
[[rule]]
id = "size.big"
kind = "size"
above = 1000
action = "drop"
[[rule]]
id = "att.pdf"
kind = "attachment"
types = ["application/pdf", "image/*"]
labels = ["doc"]
[[rule]]
id = "att.exe"
kind = "attachment"
extensions = [".EXE"]
action = "quarantine"
[[rule]]
id = "att.name"
kind = "attachment"
names = ["Rechnung"]
labels = ["invoice"]
[[rule]]
id = "auth.bad"
kind = "auth"
spf = ["fail", "softfail"]
dmarc = ["fail"]
score = 3
[[rule]]
id = "auth.missing"
kind = "auth"
dkim = ["missing"]
score = 0.5
)");
  MessageFactory f;
  Message& big = f.Make("s");
  big.raw.assign(1001, 'x');
  EXPECT_EQ(Eval(*rules, big).decision.action, FilterAction::kDrop);
  Message& small = f.Make("s");
  small.raw.assign(1000, 'x');
  EXPECT_FALSE(Eval(*rules, small).Fired("size.big"));

  Message& docs = f.Make("s");
  MessageFactory::AddAttachment(docs, "R-2026-118_Rechnung.PDF", "application/pdf");
  MessageFactory::AddAttachment(docs, "logo.png", "image/png");
  const Evaluated d = Eval(*rules, docs);
  EXPECT_TRUE(d.Fired("att.pdf"));
  EXPECT_TRUE(d.Fired("att.name"));
  EXPECT_FALSE(d.Fired("att.exe"));
  EXPECT_EQ(d.labels, (std::vector<std::string>{"doc", "invoice"}));
  Message& exe = f.Make("s");
  MessageFactory::AddAttachment(exe, "setup.exe", "application/octet-stream");
  EXPECT_EQ(Eval(*rules, exe).decision.action, FilterAction::kQuarantine);

  Message& spf = f.Make("s", "", {{"Authentication-Results", "mx.example; dkim=pass header.i=@x; SPF=SoftFail (x) smtp.mailfrom=y"}});
  const Evaluated s = Eval(*rules, spf);
  EXPECT_TRUE(s.Fired("auth.bad"));
  EXPECT_FALSE(s.Fired("auth.missing"));
  Message& none = f.Make("s");
  const Evaluated n = Eval(*rules, none);
  EXPECT_FALSE(n.Fired("auth.bad"));
  EXPECT_TRUE(n.Fired("auth.missing"));
  Message& pass = f.Make("s", "", {{"Authentication-Results", "mx; spf=pass; dmarc=pass; nodkim=fail"}});
  EXPECT_TRUE(Eval(*rules, pass).Fired("auth.missing"));  // "nodkim=" is not dkim=
}

TEST(FilterRulesTest, ScoresThresholdsAllRulesAndAllowCap) {
  auto rules = MustParse(R"(
[[threshold]]
id = "t.suspect"
score = 3
action = "label"
labels = ["spam-suspect"]
[[threshold]]
id = "t.quarantine"
score = 6
action = "quarantine"
[[rule]]
id = "a"
kind = "subject"
keywords = ["cash"]
score = 3
[[rule]]
id = "b"
kind = "body"
keywords = ["winner"]
score = 3
[[rule]]
id = "both"
kind = "all"
rules = ["a", "b"]
labels = ["combo"]
[[rule]]
id = "friend"
kind = "sender"
domains = ["friend.example"]
action = "accept"
[[rule]]
id = "kill"
kind = "subject"
keywords = ["kill"]
action = "drop"
)");
  MessageFactory f;
  const Evaluated one = Eval(*rules, f.Make("cash", ""));
  EXPECT_EQ(one.fired, (std::vector<std::string>{"a", "t.suspect"}));
  EXPECT_EQ(one.decision.action, FilterAction::kLabel);
  const Evaluated two = Eval(*rules, f.Make("cash", "winner"));
  EXPECT_EQ(two.fired, (std::vector<std::string>{"a", "b", "both", "t.suspect", "t.quarantine"}));
  EXPECT_EQ(two.decision.action, FilterAction::kQuarantine);
  EXPECT_EQ(two.labels, (std::vector<std::string>{"combo", "spam-suspect"}));
  Message& friendly = f.Make("cash kill", "winner");
  MessageFactory::SetFrom(friendly, "pal@friend.example");
  const Evaluated allowed = Eval(*rules, friendly);
  EXPECT_EQ(allowed.decision.action, FilterAction::kLabel);  // capped; the combo label stays
  EXPECT_FALSE(allowed.Fired("t.quarantine"));
  EXPECT_EQ(Eval(*rules, f.Make("kill", "")).decision.action, FilterAction::kDrop);
  EXPECT_EQ(Eval(*rules, f.Make("hello", "")).decision.action, FilterAction::kAccept);
}

TEST(FilterRulesTest, InvalidRulesNameFileLineAndRule) {
  struct Case {
    const char* text;
    const char* expect;
  };
  const Case cases[] = {
      {"[[rule]]\nid = \"x\"\nkind = \"subject\"\nkeywords = [\"a\"]\naction = \"dropp\"\n",
       "test.toml:5: rule 'x': unknown action 'dropp'"},
      {"[[rule]]\nid = \"x\"\nkind = \"subjekt\"\n", "test.toml:1: rule 'x': unknown kind 'subjekt'"},
      {"\n\n[[rule]]\nid = \"re\"\nkind = \"body\"\nregex = ['ok', 'bad(']\n", "test.toml:3: rule 're': pattern 'bad('"},
      {"[[rule]]\nid = \"x\"\nkind = \"size\"\nabove = 1\nkeywords = [\"a\"]\n",
       "test.toml:5: rule 'x': key 'keywords' does not apply to kind 'size'"},
      {"[[rule]]\nid = \"x\"\nkind = \"all\"\nrules = [\"y\"]\n", "rule 'x': 'rules' names 'y'"},
      {"[[rule]]\nid = \"x\"\nkind = \"subject\"\nkeywords = [\"a\"]\n[[rule]]\nid = \"x\"\nkind = \"subject\"\nkeywords = [\"b\"]\n",
       "test.toml:5: rule 'x': duplicate id"},
      {"[[rule]]\nid = \"x\"\nkind = \"subject\"\n", "rule 'x': subject rule has no condition"},
      {"[[rule]\nid = 1\n", "test.toml:1:"},
      {"rules = 3\n", "test.toml:1: unknown key 'rules'"},
  };
  for (const Case& c : cases) {
    auto rules = RuleSet::Parse(c.text, "test.toml");
    ASSERT_FALSE(rules.has_value()) << c.text;
    EXPECT_EQ(rules.error().code, "filter.rules");
    EXPECT_NE(rules.error().message.find(c.expect), std::string::npos) << rules.error().message;
  }
}

TEST(FilterRulesTest, IncludesResolveRelativeToTheIncludingFile) {
  const auto dir = std::filesystem::temp_directory_path() / ("mailrail-rules-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir / "sub");
  std::ofstream(dir / "main.toml") << "include = [\"sub/extra.toml\", \"builtin:default\"]\n"
                                      "[[rule]]\nid = \"main.r\"\nkind = \"subject\"\nkeywords = [\"zzz\"]\n";
  std::ofstream(dir / "sub" / "extra.toml") << "[[rule]]\nid = \"extra.r\"\nkind = \"body\"\nkeywords = [\"yyy\"]\n"
                                               "action = \"drop\"\n";
  std::ofstream(dir / "cycle.toml") << "include = [\"cycle.toml\"]\n";
  auto rules = RuleSet::Load((dir / "main.toml").string());
  ASSERT_TRUE(rules.has_value()) << rules.error().message;
  MessageFactory f;
  EXPECT_EQ(Eval(*rules.value(), f.Make("x", "yyy")).decision.action, FilterAction::kDrop);
  EXPECT_TRUE(Eval(*rules.value(), f.Make("Rechnung 42", "")).Fired("invoice.subject.de"));
  auto cycle = RuleSet::Load((dir / "cycle.toml").string());
  ASSERT_FALSE(cycle.has_value());
  EXPECT_NE(cycle.error().message.find("include cycle"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(DefaultRulesTest, LabelsInvoicesInSeveralLanguages) {
  auto rules = RuleSet::Load(std::string(kBuiltinDefaultRules));
  ASSERT_TRUE(rules.has_value()) << rules.error().message;
  MessageFactory f;
  for (const char* subject : {"Invoice INV-2026-0042", "Rechnung Nr. 2026-118", "Votre facture du 3 mai",
                              "Factura 2026/77", "Fattura n. 12", "Factuur 99812", "Faktura VAT 7/2026"}) {
    const Evaluated e = Eval(*rules.value(), f.Make(subject, "Please find attached."));
    EXPECT_NE(std::find(e.labels.begin(), e.labels.end(), "invoice"), e.labels.end()) << subject;
    EXPECT_EQ(e.decision.action, FilterAction::kLabel) << subject;
  }
  Message& xml = f.Make("Documents", "see attachment");
  MessageFactory::AddAttachment(xml, "xrechnung_4711.xml", "application/xml");
  const Evaluated e = Eval(*rules.value(), xml);
  EXPECT_NE(std::find(e.labels.begin(), e.labels.end(), "e-invoice"), e.labels.end());
  Message& body = f.Make("Documents", "Rechnungsnummer: 4711, Betrag 12 EUR");
  MessageFactory::AddAttachment(body, "scan.pdf", "application/pdf");
  EXPECT_TRUE(Eval(*rules.value(), body).Fired("invoice.body_with_document"));
  EXPECT_TRUE(Eval(*rules.value(), f.Make("Lunch tomorrow?", "See you at noon.")).labels.empty());
  const Evaluated spam = Eval(*rules.value(), f.Make("ADV: Lowest mortgage rates!!!", "Click here to be removed. "
                                                                                     "100% guaranteed, act now."));
  EXPECT_GE(spam.decision.score, 10.0);
  EXPECT_EQ(spam.decision.action, FilterAction::kQuarantine);
}

}  // namespace
}  // namespace mailrail::stages
