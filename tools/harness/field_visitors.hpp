// field_visitors.hpp: the three visitors behind fields.cpp (internal to tools/harness).
//
// fields.cpp describes each message struct once, as a `walk(V&, T&)` that names its fields;
// a visitor sees every field through num/flags/enumeration/bytes/fixed/text/errnum, and the
// sub-structures through list (arrays: `caps[2].`), opt (optional parts: `bitmap.`) and alt
// (DEVICE_FEATURE data, chosen by the feature index). `all()` is true when the visitor needs
// every field regardless of the values (schema, setting), false when it shows only what the
// message carries (flattening).
#pragma once

#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "tools/harness/fields.hpp"

namespace vfu::harness::detail {

using namespace proto;

template <class T>
constexpr uint64_t max_of() {
  if constexpr (std::is_enum_v<T>) return UINT8_MAX;
  else return std::numeric_limits<T>::max();
}

// Feature data alternatives and the feature indexes they belong to.
template <class A>
bool alt_serves(uint32_t index) {
  if constexpr (std::is_same_v<A, feature_migration>) return index == feature::migration;
  if constexpr (std::is_same_v<A, feature_device_state>) return index == feature::mig_device_state;
  if constexpr (std::is_same_v<A, feature_logging_ctl>)
    return index == feature::dma_logging_start || index == feature::dma_logging_stop;
  if constexpr (std::is_same_v<A, feature_logging_report>) return index == feature::dma_logging_report;
  return false;
}
inline bool known_feature(uint32_t i) {
  return i == feature::migration || i == feature::mig_device_state || i == feature::dma_logging_start ||
         i == feature::dma_logging_stop || i == feature::dma_logging_report;
}

struct schema_visitor {
  std::string prefix;
  std::vector<field_info>* out;
  std::set<std::string>* seen;

  bool all() const { return true; }
  void add(field_info f) {
    f.name = prefix + f.name;
    if (seen->insert(f.name).second) out->push_back(std::move(f));
  }
  template <class T>
  void num(const char* n, T&) { add({n, field_kind::number, max_of<T>(), nullptr, nullptr}); }
  template <class T>
  void flags(const char* n, T&, const flag_table& t) { add({n, field_kind::flags, max_of<T>(), &t, nullptr}); }
  template <class T>
  void enumeration(const char* n, T&, const std::vector<flag_name>& e) { add({n, field_kind::enumeration, max_of<T>(), nullptr, &e}); }
  void bytes(const char* n, std::vector<uint8_t>&) { add({n, field_kind::bytes, 0, nullptr, nullptr}); }
  void fixed(const char* n, std::array<uint8_t, 8>&) { add({n, field_kind::bytes, 8, nullptr, nullptr}); }
  void text(const char* n, std::optional<std::string>&) { add({n, field_kind::text, 0, nullptr, nullptr}); }
  void errnum(const char* n, uint32_t&) { add({n, field_kind::errnum, 4095, nullptr, nullptr}); }
  template <class E, class F>
  void list(const char* n, std::vector<E>&, F f) {
    E e{};
    schema_visitor sub{prefix + n + "[].", out, seen};
    f(sub, e);
  }
  template <class E, class F>
  void opt(const char* n, std::optional<E>&, F f) {
    E e{};
    schema_visitor sub{prefix + n + ".", out, seen};
    f(sub, e);
  }
  template <class A, class Var, class F>
  void alt(Var&, F f) {
    A a{};
    f(*this, a);
  }
};

struct set_visitor {
  std::string prefix;
  const std::string* key;
  const std::string* value;
  bool* matched;
  std::string* err;
  uint32_t feature_index = 0;

  bool all() const { return true; }
  bool here(const char* n) const { return key->size() == prefix.size() + std::strlen(n) && key->compare(0, prefix.size(), prefix) == 0 && key->compare(prefix.size(), std::string::npos, n) == 0; }
  bool parse(const field_info& f, field_value& v) {
    *matched = true;
    return parse_field_value(f, *value, v, *err);
  }
  template <class T>
  void assign(T& r, uint64_t v) {
    if constexpr (std::is_enum_v<T>) r = T(std::underlying_type_t<T>(v));
    else r = T(v);
  }
  template <class T>
  void num(const char* n, T& r) {
    field_value v;
    if (here(n) && parse({n, field_kind::number, max_of<T>(), nullptr, nullptr}, v)) assign(r, v.num);
  }
  template <class T>
  void flags(const char* n, T& r, const flag_table& t) {
    field_value v;
    if (here(n) && parse({n, field_kind::flags, max_of<T>(), &t, nullptr}, v)) assign(r, v.num);
  }
  template <class T>
  void enumeration(const char* n, T& r, const std::vector<flag_name>& e) {
    field_value v;
    if (here(n) && parse({n, field_kind::enumeration, max_of<T>(), nullptr, &e}, v)) assign(r, v.num);
  }
  void bytes(const char* n, std::vector<uint8_t>& r) {
    field_value v;
    if (here(n) && parse({n, field_kind::bytes, 0, nullptr, nullptr}, v)) r = std::move(v.bytes);
  }
  void fixed(const char* n, std::array<uint8_t, 8>& r) {
    field_value v;
    if (here(n) && parse({n, field_kind::bytes, 8, nullptr, nullptr}, v)) {
      r.fill(0);
      std::copy(v.bytes.begin(), v.bytes.end(), r.begin());
    }
  }
  void text(const char* n, std::optional<std::string>& r) {
    field_value v;
    if (here(n) && parse({n, field_kind::text, 0, nullptr, nullptr}, v)) r = std::move(v.text);
  }
  void errnum(const char* n, uint32_t& r) {
    field_value v;
    if (here(n) && parse({n, field_kind::errnum, 4095, nullptr, nullptr}, v)) r = uint32_t(v.num);
  }
  template <class E, class F>
  void list(const char* n, std::vector<E>& vec, F f) {
    std::string p = prefix + n + "[";
    if (key->compare(0, p.size(), p) != 0) return;
    size_t close = key->find(']', p.size());
    uint64_t idx;
    std::string e2;
    if (close == std::string::npos || !parse_number(key->substr(p.size(), close - p.size()), idx, e2, 4095) ||
        key->compare(close, 2, "].") != 0) {
      return;  // not a valid element name: reported as an unknown field
    }
    if (vec.size() <= idx) vec.resize(idx + 1);
    set_visitor sub = *this;
    sub.prefix = key->substr(0, close + 2);
    f(sub, vec[idx]);
  }
  template <class E, class F>
  void opt(const char* n, std::optional<E>& o, F f) {
    std::string p = prefix + n + ".";
    if (key->compare(0, p.size(), p) != 0) return;
    E tmp = o ? *o : E{};
    set_visitor sub = *this;
    sub.prefix = p;
    bool before = *matched;
    f(sub, tmp);
    if (*matched && !before) o = std::move(tmp);
  }
  template <class A, class Var, class F>
  void alt(Var& var, F f) {
    if (auto* a = std::get_if<A>(&var)) {
      f(*this, *a);
      return;
    }
    if (!std::holds_alternative<std::monostate>(var)) return;  // another kind of data is set
    if (known_feature(feature_index) && !alt_serves<A>(feature_index)) return;
    A tmp{};
    bool before = *matched;
    f(*this, tmp);
    if (*matched && !before) var = std::move(tmp);
  }
};

struct flatten_visitor {
  std::string prefix;
  field_list* out;

  bool all() const { return false; }
  void push(const char* n, field_value v) { out->emplace_back(prefix + n, std::move(v)); }
  template <class T>
  static uint64_t as_u64(const T& r) {
    if constexpr (std::is_enum_v<T>) return uint64_t(std::underlying_type_t<T>(r));
    else return uint64_t(r);
  }
  template <class T>
  void num(const char* n, T& r) {
    field_value v;
    v.num = as_u64(r);
    push(n, std::move(v));
  }
  template <class T>
  void flags(const char* n, T& r, const flag_table& t) {
    field_value v;
    v.kind = field_kind::flags;
    v.num = as_u64(r);
    v.flags = &t;
    push(n, std::move(v));
  }
  template <class T>
  void enumeration(const char* n, T& r, const std::vector<flag_name>& e) {
    field_value v;
    v.kind = field_kind::enumeration;
    v.num = as_u64(r);
    v.enums = &e;
    push(n, std::move(v));
  }
  void bytes(const char* n, std::vector<uint8_t>& r) {
    field_value v;
    v.kind = field_kind::bytes;
    v.bytes = r;
    push(n, std::move(v));
  }
  void fixed(const char* n, std::array<uint8_t, 8>& r) {
    field_value v;
    v.kind = field_kind::bytes;
    v.bytes.assign(r.begin(), r.end());
    push(n, std::move(v));
  }
  void text(const char* n, std::optional<std::string>& r) {
    if (!r) return;
    field_value v;
    v.kind = field_kind::text;
    v.text = *r;
    push(n, std::move(v));
  }
  void errnum(const char* n, uint32_t& r) {
    field_value v;
    v.kind = field_kind::errnum;
    v.num = r;
    push(n, std::move(v));
  }
  template <class E, class F>
  void list(const char* n, std::vector<E>& vec, F f) {
    for (size_t i = 0; i < vec.size(); ++i) {
      flatten_visitor sub{prefix + n + "[" + std::to_string(i) + "].", out};
      f(sub, vec[i]);
    }
  }
  template <class E, class F>
  void opt(const char* n, std::optional<E>& o, F f) {
    if (!o) return;
    flatten_visitor sub{prefix + n + ".", out};
    f(sub, *o);
  }
  template <class A, class Var, class F>
  void alt(Var& var, F f) {
    if (auto* a = std::get_if<A>(&var)) f(*this, *a);
  }
};

}  // namespace vfu::harness::detail
