#include "common/json_bridge.h"

#include "gmock/gmock.h"
#include "google/protobuf/type.pb.h"
#include "google/protobuf/wrappers.pb.h"
#include "gtest/gtest.h"

namespace grove {
namespace {

using ::testing::StartsWith;

TEST(JsonBridgeTest, FieldsArePrintedInTheirDeclaredOrder) {
  google::protobuf::Field field;
  field.set_name("x");
  field.set_number(3);
  field.set_kind(google::protobuf::Field::TYPE_INT64);
  absl::StatusOr<std::string> json = MessageToJson(field);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_THAT(*json, StartsWith("{\"kind\":\"TYPE_INT64\",\"cardinality\":\"CARDINALITY_UNKNOWN\","
                                "\"number\":3,\"name\":\"x\",\"type_url\":\"\","));
  // The same every time (a hash map's order would not be).
  for (int i = 0; i < 20; ++i) EXPECT_EQ(*MessageToJson(field), *json);
}

TEST(JsonBridgeTest, NumbersBytesAndRoundTrips) {
  google::protobuf::DoubleValue d;
  d.set_value(0.1);
  EXPECT_EQ(*MessageToJson(d), "0.1");
  google::protobuf::Int64Value i;
  i.set_value(int64_t{1} << 40);
  EXPECT_EQ(*MessageToJson(i), "1099511627776");
  google::protobuf::BytesValue b;
  b.set_value("text");
  EXPECT_EQ(*MessageToJson(b), "\"text\"");
  b.set_value(std::string("\xff\x00", 2));
  EXPECT_EQ(*MessageToJson(b), "{\"base64\":\"/wA=\"}");
  google::protobuf::BytesValue back;
  ASSERT_TRUE(JsonToMessage(*MessageToJson(b), &back).ok());
  EXPECT_EQ(back.value(), b.value());
}

}  // namespace
}  // namespace grove
