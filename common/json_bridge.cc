#include "common/json_bridge.h"

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/printable.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace grove {
namespace {

namespace pb = google::protobuf;

// The field of `type` that JSON key `key` names (its JSON name or its proto name).
const pb::FieldDescriptor* FieldOf(const pb::Descriptor* type, const std::string& key) {
  const pb::FieldDescriptor* field = type->FindFieldByName(key);
  for (int i = 0; field == nullptr && i < type->field_count(); ++i) {
    if (type->field(i)->json_name() == key) field = type->field(i);
  }
  return field;
}

// A google.protobuf.Value, read and changed through reflection only: the library's own code,
// whatever the inline code of this build would make of its map (a sanitizer build of this
// file against Debian's uninstrumented libprotobuf does not agree with it on Map's layout).
class JsonValue {
 public:
  explicit JsonValue(pb::Message* value)
      : value_(value), type_(value->GetDescriptor()), reflection_(value->GetReflection()) {}

  bool is_string() const { return Has("string_value"); }
  std::string string() const { return reflection_->GetString(*value_, Field("string_value")); }
  void set_string(const std::string& s) { reflection_->SetString(value_, Field("string_value"), s); }
  void set_number(double n) { reflection_->SetDouble(value_, Field("number_value"), n); }

  // The members of an object value, by key; empty for another kind.
  std::vector<std::pair<std::string, JsonValue>> members() {
    std::vector<std::pair<std::string, JsonValue>> out;
    if (!Has("struct_value")) return out;
    pb::Message* object = reflection_->MutableMessage(value_, Field("struct_value"));
    const pb::FieldDescriptor* fields = object->GetDescriptor()->FindFieldByName("fields");
    const pb::Reflection* r = object->GetReflection();
    for (int i = 0; i < r->FieldSize(*object, fields); ++i) {
      pb::Message* entry = r->MutableRepeatedMessage(object, fields, i);
      const pb::Descriptor* d = entry->GetDescriptor();
      out.emplace_back(entry->GetReflection()->GetString(*entry, d->FindFieldByName("key")),
                       JsonValue(entry->GetReflection()->MutableMessage(
                           entry, d->FindFieldByName("value"))));
    }
    return out;
  }
  // The elements of a list value; empty for another kind.
  std::vector<JsonValue> elements() {
    std::vector<JsonValue> out;
    if (!Has("list_value")) return out;
    pb::Message* list = reflection_->MutableMessage(value_, Field("list_value"));
    const pb::FieldDescriptor* values = list->GetDescriptor()->FindFieldByName("values");
    const pb::Reflection* r = list->GetReflection();
    for (int i = 0; i < r->FieldSize(*list, values); ++i) {
      out.emplace_back(r->MutableRepeatedMessage(list, values, i));
    }
    return out;
  }
  bool is_list() const { return Has("list_value"); }
  // Makes this value {"base64": <what it was>}.
  void WrapAsBase64() {
    const std::string text = string();
    pb::Message* object = reflection_->MutableMessage(value_, Field("struct_value"));
    const pb::FieldDescriptor* fields = object->GetDescriptor()->FindFieldByName("fields");
    pb::Message* entry = object->GetReflection()->AddMessage(object, fields);
    const pb::Descriptor* d = entry->GetDescriptor();
    entry->GetReflection()->SetString(entry, d->FindFieldByName("key"), "base64");
    JsonValue(entry->GetReflection()->MutableMessage(entry, d->FindFieldByName("value")))
        .set_string(text);
  }
  // The string inside {"base64": "..."}, if this value is that.
  std::optional<std::string> Base64Member() {
    if (!Has("struct_value")) return std::nullopt;
    for (auto& [key, member] : members()) {
      if (key == "base64" && member.is_string()) return member.string();
    }
    return std::nullopt;
  }

 private:
  const pb::FieldDescriptor* Field(const char* name) const { return type_->FindFieldByName(name); }
  bool Has(const char* name) const { return reflection_->HasField(*value_, Field(name)); }

  pb::Message* value_;
  const pb::Descriptor* type_;
  const pb::Reflection* reflection_;
};

// Walks `value` (JSON of a message of `type`), changing each value of a bytes field with
// `bytes` and each of a 64-bit integer field with `int64`.
template <typename Bytes, typename Int64>
void Walk(JsonValue value, const pb::Descriptor* type, const Bytes& bytes, const Int64& int64) {
  for (auto& [key, member] : value.members()) {
    const pb::FieldDescriptor* field = FieldOf(type, key);
    if (field == nullptr) continue;
    auto each = [&](JsonValue v) {
      if (field->type() == pb::FieldDescriptor::TYPE_BYTES) {
        bytes(v);
      } else if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_INT64 ||
                 field->cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT64) {
        int64(v);
      } else if (field->type() == pb::FieldDescriptor::TYPE_MESSAGE && !field->is_map()) {
        Walk(v, field->message_type(), bytes, int64);
      }
    };
    if (field->is_repeated() && member.is_list()) {
      for (JsonValue& v : member.elements()) each(v);
    } else {
      each(member);
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
      JsonValue(&value), out->GetDescriptor(),
      [](JsonValue v) {
        if (std::optional<std::string> b64 = v.Base64Member()) {
          v.set_string(*b64);
        } else if (v.is_string()) {
          v.set_string(absl::Base64Escape(v.string()));
        }
      },
      [](JsonValue) {});
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
      JsonValue(&value), message.GetDescriptor(),
      [](JsonValue v) {
        std::string raw;
        if (!v.is_string() || !absl::Base64Unescape(v.string(), &raw)) return;
        if (IsUtf8(raw)) {
          v.set_string(raw);
        } else {
          v.WrapAsBase64();
        }
      },
      [](JsonValue v) {
        int64_t n;
        if (v.is_string() && absl::SimpleAtoi(v.string(), &n) && std::llabs(n) <= (int64_t{1} << 53)) {
          v.set_number(static_cast<double>(n));
        }
      });
  std::string out;
  if (auto printed = pb::util::MessageToJsonString(value, &out); !printed.ok()) {
    return absl::InternalError(printed.ToString());
  }
  return out;
}

}  // namespace grove
