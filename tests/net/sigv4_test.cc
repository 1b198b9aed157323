// Vectors from the AWS S3 API reference, "Signature Calculations for the Authorization Header:
// Transferring Payload in a Single Chunk" (sig-v4-header-based-auth.html, examples GET Object,
// PUT Object, GET Bucket Lifecycle, Get Bucket (List Objects)) and from the AWS general reference
// "Examples of how to derive a signing key for Signature Version 4".
#include "net/sigv4.h"

#include <fmt/core.h>
#include <gtest/gtest.h>

namespace mailrail::net {
namespace {

constexpr std::string_view kEmpty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const SigV4Credentials kExample{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"};
constexpr std::string_view kDate = "20130524T000000Z";

SigV4Request ExampleRequest(std::string_view method, std::string_view path, std::string payload_hash) {
  SigV4Request r{method, path, {}, {}, payload_hash};
  r.headers = {{"Host", "examplebucket.s3.amazonaws.com"},
               {"x-amz-date", std::string(kDate)},
               {"x-amz-content-sha256", payload_hash}};
  return r;
}

std::string SignatureOf(const std::string& authorization) {
  return authorization.substr(authorization.rfind('=') + 1);
}

TEST(SigV4Test, GetObjectExampleWithRangeHeader) {
  SigV4Request r = ExampleRequest("GET", "/test.txt", std::string(kEmpty));
  r.headers.emplace_back("Range", "bytes=0-9");
  const std::string canonical = CanonicalRequest(r);
  EXPECT_EQ(canonical,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
            "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
            "x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n"
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex(canonical), "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
  EXPECT_EQ(Authorization(r, kExample, "us-east-1", "s3", kDate),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

TEST(SigV4Test, PutObjectExampleSignsThePayloadHashAndEncodesTheKey) {
  const std::string hash = Sha256Hex("Welcome to Amazon S3.");
  EXPECT_EQ(hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
  const std::string path = "/" + S3UriEncode("test$file.text", true);
  EXPECT_EQ(path, "/test%24file.text");
  SigV4Request r = ExampleRequest("PUT", path, hash);
  r.headers.emplace_back("Date", "Fri, 24 May 2013 00:00:00 GMT");
  r.headers.emplace_back("x-amz-storage-class", "REDUCED_REDUNDANCY");
  const std::string authorization = Authorization(r, kExample, "us-east-1", "s3", kDate);
  EXPECT_NE(authorization.find("SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class"),
            std::string::npos);
  EXPECT_EQ(SignatureOf(authorization), "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
  // The signature covers the payload: another body gives another signature.
  r.payload_sha256_hex = Sha256Hex("Welcome to Amazon S4.");
  EXPECT_NE(SignatureOf(Authorization(r, kExample, "us-east-1", "s3", kDate)),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
}

TEST(SigV4Test, QueryParametersAreSortedAndAValuelessOneGetsAnEmptyValue) {
  SigV4Request lifecycle = ExampleRequest("GET", "/", std::string(kEmpty));
  lifecycle.query = {{"lifecycle", ""}};
  EXPECT_EQ(SignatureOf(Authorization(lifecycle, kExample, "us-east-1", "s3", kDate)),
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
  SigV4Request list = ExampleRequest("GET", "/", std::string(kEmpty));
  list.query = {{"prefix", "J"}, {"max-keys", "2"}};
  EXPECT_EQ(SignatureOf(Authorization(list, kExample, "us-east-1", "s3", kDate)),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
}

TEST(SigV4Test, DerivesTheDocumentedSigningKey) {
  const auto key = SigningKey("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830", "us-east-1", "iam");
  std::string hex;
  for (std::uint8_t b : key) hex += fmt::format("{:02x}", b);
  EXPECT_EQ(hex, "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9");
}

TEST(SigV4Test, EncodesLikeS3AndFormatsTheDate) {
  EXPECT_EQ(S3UriEncode("a b+c/d~e_f.g-h", false), "a%20b%2Bc%2Fd~e_f.g-h");
  EXPECT_EQ(S3UriEncode("prefix/ab", true), "prefix/ab");
  EXPECT_EQ(S3UriEncode("\xC3\xA9", false), "%C3%A9");
  EXPECT_EQ(AmzDate(1369353600), "20130524T000000Z");
}

}  // namespace
}  // namespace mailrail::net
