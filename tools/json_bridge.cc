#include "tools/json_bridge.h"

#include <cmath>
#include <cstdint>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace grove::cli {
namespace {

namespace pb = google::protobuf;

bool IsUtf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

// The field of `type` that JSON key `key` names (its JSON name or its proto name).
const pb::FieldDescriptor* FieldOf(const pb::Descriptor* type, const std::string& key) {
  const pb::FieldDescriptor* field = type->FindFieldByName(key);
  for (int i = 0; field == nullptr && i < type->field_count(); ++i) {
    if (type->field(i)->json_name() == key) field = type->field(i);
  }
  return field;
}

// Walks `value` (JSON of a message of `type`), changing each value of a bytes field with
// `bytes` and each of a 64-bit integer field with `int64` (when set).
template <typename Bytes, typename Int64>
void Walk(pb::Value* value, const pb::Descriptor* type, const Bytes& bytes, const Int64& int64) {
  if (!value->has_struct_value()) return;
  for (auto& [key, field_value] : *value->mutable_struct_value()->mutable_fields()) {
    const pb::FieldDescriptor* field = FieldOf(type, key);
    if (field == nullptr) continue;
    auto each = [&](pb::Value* v) {
      if (field->type() == pb::FieldDescriptor::TYPE_BYTES) {
        bytes(v);
      } else if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_INT64 ||
                 field->cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT64) {
        int64(v);
      } else if (field->type() == pb::FieldDescriptor::TYPE_MESSAGE && !field->is_map()) {
        Walk(v, field->message_type(), bytes, int64);
      }
    };
    if (field->is_repeated() && field_value.has_list_value()) {
      for (pb::Value& v : *field_value.mutable_list_value()->mutable_values()) each(&v);
    } else {
      each(&field_value);
    }
  }
}

}  // namespace

absl::Status JsonToMessage(const std::string& json, pb::Message* out) {
  pb::Value value;
  if (auto parsed = pb::util::JsonStringToMessage(json, &value); !parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("not JSON: ", parsed.ToString()));
  }
  // Text for bytes fields becomes the base64 that protobuf's mapping reads; {"base64": ...}
  // is taken as it is.
  Walk(
      &value, out->GetDescriptor(),
      [](pb::Value* v) {
        if (v->has_string_value()) {
          v->set_string_value(absl::Base64Escape(v->string_value()));
        } else if (v->has_struct_value() && v->struct_value().fields().contains("base64")) {
          pb::Value inner = v->struct_value().fields().at("base64");
          *v = inner;
        }
      },
      [](pb::Value*) {});
  std::string rewritten;
  if (auto printed = pb::util::MessageToJsonString(value, &rewritten); !printed.ok()) {
    return absl::InternalError(printed.ToString());
  }
  if (auto parsed = pb::util::JsonStringToMessage(rewritten, out); !parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a ", out->GetDescriptor()->full_name(), ": ", parsed.ToString()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> MessageToJson(const pb::Message& message) {
  std::string json;
  pb::util::JsonPrintOptions print;
  print.always_print_primitive_fields = true;
  print.preserve_proto_field_names = true;
  if (auto printed = pb::util::MessageToJsonString(message, &json, print); !printed.ok()) {
    return absl::InternalError(printed.ToString());
  }
  pb::Value value;
  if (auto parsed = pb::util::JsonStringToMessage(json, &value); !parsed.ok()) {
    return absl::InternalError(parsed.ToString());
  }
  Walk(
      &value, message.GetDescriptor(),
      [](pb::Value* v) {
        std::string raw;
        if (!v->has_string_value() || !absl::Base64Unescape(v->string_value(), &raw)) return;
        if (IsUtf8(raw)) {
          v->set_string_value(raw);
        } else {
          pb::Value b64 = *v;
          (*v->mutable_struct_value()->mutable_fields())["base64"] = b64;
        }
      },
      [](pb::Value* v) {
        int64_t n;
        if (v->has_string_value() && absl::SimpleAtoi(v->string_value(), &n) &&
            std::llabs(n) <= (int64_t{1} << 53)) {
          v->set_number_value(static_cast<double>(n));
        }
      });
  std::string out;
  if (auto printed = pb::util::MessageToJsonString(value, &out); !printed.ok()) {
    return absl::InternalError(printed.ToString());
  }
  return out;
}

}  // namespace grove::cli
