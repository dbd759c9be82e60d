#include "common/json_bridge.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/json.h"
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
  bool is_object() const { return Has("struct_value"); }
  bool is_number() const { return Has("number_value"); }
  double number() const { return reflection_->GetDouble(*value_, Field("number_value")); }
  bool is_bool() const { return Has("bool_value"); }
  bool boolean() const { return reflection_->GetBool(*value_, Field("bool_value")); }
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

// A JSON number as protobuf prints one: an integer exactly, otherwise the shortest text that
// reads back as the same double.
std::string NumberText(double n) {
  if (std::nearbyint(n) == n && std::fabs(n) <= 9007199254740992.0) {
    return absl::StrCat(static_cast<int64_t>(n));
  }
  for (int precision = 1; precision < 17; ++precision) {
    std::string text = absl::StrFormat("%.*g", precision, n);
    double back = 0;
    if (absl::SimpleAtod(text, &back) && back == n) return text;
  }
  return absl::StrFormat("%.17g", n);
}

// `value` as one line of JSON: the members of an object of message `type` in the order its
// fields are declared (then any others, and a map's keys, sorted), not in a hash map's order.
std::string Print(JsonValue value, const pb::Descriptor* type) {
  if (value.is_object()) {
    std::vector<std::pair<std::string, JsonValue>> members = value.members();
    std::vector<std::pair<int, size_t>> order;  // (declaration index or past the end, member)
    for (size_t i = 0; i < members.size(); ++i) {
      const pb::FieldDescriptor* field = type ? FieldOf(type, members[i].first) : nullptr;
      order.emplace_back(field ? field->index() : type ? type->field_count() : 0, i);
    }
    std::sort(order.begin(), order.end(), [&](const auto& a, const auto& b) {
      return a.first != b.first ? a.first < b.first
                                : members[a.second].first < members[b.second].first;
    });
    std::string out = "{";
    for (size_t k = 0; k < order.size(); ++k) {
      auto& [key, member] = members[order[k].second];
      const pb::FieldDescriptor* field = type ? FieldOf(type, key) : nullptr;
      const pb::Descriptor* inner = nullptr;
      if (field != nullptr && field->is_map()) {
        const pb::FieldDescriptor* map_value = field->message_type()->FindFieldByName("value");
        // A map is an object whose values are of the map's value type.
        std::string map = "{";
        std::vector<std::pair<std::string, JsonValue>> entries = member.members();
        std::sort(entries.begin(), entries.end(),
                  [](const auto& a, const auto& b) { return a.first < b.first; });
        for (size_t e = 0; e < entries.size(); ++e) {
          absl::StrAppend(&map, e ? "," : "", JsonQuote(entries[e].first), ":",
                          Print(entries[e].second, map_value->message_type()));
        }
        absl::StrAppend(&out, k ? "," : "", JsonQuote(key), ":", map, "}");
        continue;
      }
      if (field != nullptr) inner = field->message_type();
      absl::StrAppend(&out, k ? "," : "", JsonQuote(key), ":", Print(member, inner));
    }
    return out + "}";
  }
  if (value.is_list()) {
    std::string out = "[";
    std::vector<JsonValue> elements = value.elements();
    for (size_t i = 0; i < elements.size(); ++i) {
      absl::StrAppend(&out, i ? "," : "", Print(elements[i], type));
    }
    return out + "]";
  }
  if (value.is_string()) return JsonQuote(value.string());
  if (value.is_number()) return NumberText(value.number());
  if (value.is_bool()) return value.boolean() ? "true" : "false";
  return "null";
}

// Walks `value` (JSON of a message of `type`), changing each value of a bytes field with
// `bytes` and each of a 64-bit integer field with `int64`.
template <typename Bytes, typename Int64>
void Walk(JsonValue value, const pb::Descriptor* type, const Bytes& bytes, const Int64& int64) {
  // A wrapper's JSON is its bare value (google.protobuf.BytesValue is "...", not an object).
  if (type->full_name() == "google.protobuf.BytesValue") return bytes(value);
  if (type->full_name() == "google.protobuf.Int64Value" ||
      type->full_name() == "google.protobuf.UInt64Value") {
    return int64(value);
  }
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
  return Print(JsonValue(&value), message.GetDescriptor());
}

}  // namespace grove
