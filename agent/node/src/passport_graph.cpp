// SPDX-License-Identifier: AGPL-3.0-or-later
// The material passport as Graphviz DOT text (passport_graph.hpp); passport_svg.cpp renders it.
#include <reflow/node/passport_graph.hpp>

#include <map>
#include <set>
#include <utility>

#include <fmt/format.h>

#include <reflow/core/text.hpp>
#include <reflow/node/web.hpp>

namespace ingest {
namespace {

constexpr std::size_t k_passport_note_bytes = 40;

// `printable` (printable_text's output: no control characters, only valid UTF-8, its own
// escapes written with `\`) with `\` and `"` escaped, so that inside a DOT double-quoted string
// it ends neither the string nor becomes a Graphviz escape such as \N or \l.
std::string dot_escaped(std::string_view printable) {
  std::string out;
  for (const char c : printable) {
    if (c == '\\' || c == '"') out += '\\';
    out += c;
  }
  return out;
}

// A DOT double-quoted string of device-supplied `text`.
std::string dot_quoted(std::string_view text) {
  return "\"" + dot_escaped(agent::printable_text(text)) + "\"";
}

// A label of several lines of device-supplied text, joined by DOT's centred line break;
// `printable_note` is printable_text already (it was shortened after escaping).
std::string dot_label(std::initializer_list<std::string_view> lines,
                      std::string_view printable_note = {}) {
  std::string out;
  const auto add = [&](std::string_view escaped) {
    if (escaped.empty()) return;
    if (!out.empty()) out += "\\n";
    out += escaped;
  };
  for (const auto line : lines)
    add(dot_escaped(agent::printable_text(line)));
  add(dot_escaped(printable_note));
  return "\"" + out + "\"";
}

std::string payload_text(const nlohmann::ordered_json& object, const char* name) {
  if (!object.is_object()) return {};
  const auto it = object.find(name);
  if (it == object.end() || it->is_null()) return {};
  if (it->is_string()) return it->get<std::string>();
  return it->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string payload_quantity(const nlohmann::ordered_json& event, const char* name) {
  if (!event.is_object() || !event.contains(name) || !(*event.find(name)).is_object()) return {};
  const auto& q = *event.find(name);
  std::string value = payload_text(q, "hasNumericalValue");
  if (value.empty()) return {};
  const std::string unit = payload_text(q, "hasUnit");
  return unit.empty() ? value : value + " " + unit;
}

class DotWriter {
 public:
  std::string write(const TraceNode& root) {
    visit(root);
    std::string out =
        "digraph passport {\n  rankdir=LR;\n  node [fontname=\"sans-serif\" fontsize=10];\n";
    out += m_nodes;
    for (const auto& [from, to] : m_edges)
      out += fmt::format("  {} -> {};\n", from, to);
    return out + "}\n";
  }

 private:
  // The node's name, writing the node the first time its key is seen.
  std::string visit(const TraceNode& node) {
    std::string key;
    switch (node.kind) {
      case TraceNode::Kind::resource:
        key = "r:" + node.id;
        break;
      case TraceNode::Kind::process:
        key = "p:" + node.id;
        break;
      case TraceNode::Kind::event:
        key = "e:" + node.id;
        break;
    }
    auto [it, added] = m_names.try_emplace(key, fmt::format("n{}", m_names.size() + 1));
    const std::string name = it->second;
    if (added) m_nodes += "  " + name + " [" + attributes(node) + "];\n";
    for (const auto& child : node.children)
      m_edges.insert({visit(child), name});
    return name;
  }

  static std::string attributes(const TraceNode& node) {
    switch (node.kind) {
      case TraceNode::Kind::resource:
        return fmt::format(
            "shape=box style=\"rounded,filled\" fillcolor=\"#dce8f5\" label={} tooltip={} URL={}",
            dot_label({"resource", node.id}), dot_quoted(node.id),
            dot_quoted("/events?resource=" + web::url_encode(node.id)));
      case TraceNode::Kind::process:
        return fmt::format(
            "shape=hexagon style=filled fillcolor=\"#f5ecd0\" label={} tooltip={} URL={}",
            dot_label({"process", node.id}), dot_quoted(node.id),
            dot_quoted("/events?process=" + web::url_encode(node.id)));
      case TraceNode::Kind::event:
        break;
    }
    const auto& e = node.event;
    std::string time = payload_text(e, "hasPointInTime");
    if (time.empty()) time = payload_text(e, "hasEnd");
    if (time.empty()) time = payload_text(e, "hasBeginning");
    std::string what = payload_text(e, "action");
    if (auto q = payload_quantity(e, "resourceQuantity"); !q.empty()) what += " " + q;
    if (auto q = payload_quantity(e, "effortQuantity"); !q.empty()) what += " effort " + q;
    const std::string note = agent::shortened_text(agent::printable_text(payload_text(e, "note")),
                                                   k_passport_note_bytes);
    std::string out = fmt::format("shape=ellipse label={} tooltip={}",
                                  dot_label({what, time, "device " + node.device}, note),
                                  dot_quoted("event " + node.id));
    const std::string stream = payload_text(e, "stream");
    const std::string seq = payload_text(e, "seq");
    if (!stream.empty() && !seq.empty())
      out += " URL=" + dot_quoted(fmt::format("/event?device={}&amp;stream={}&amp;seq={}",
                                              web::url_encode(node.device), web::url_encode(stream),
                                              web::url_encode(seq)));
    return out;
  }

  std::map<std::string, std::string> m_names;  // key (kind:id) → node name
  std::string m_nodes;
  std::set<std::pair<std::string, std::string>> m_edges;
};

}  // namespace

std::string passport_dot(const TraceNode& root) {
  return DotWriter().write(root);
}

}  // namespace ingest
