// SPDX-License-Identifier: AGPL-3.0-or-later
// render_svg with Debian's libgraphviz (cgraph parses DOT, gvc lays out and renders in memory).
// Graphviz rather than a layout of our own: layered layout with few crossings is its job, it
// is in Debian (libgraphviz-dev), and gvRenderData renders without files or a `dot` process.
#include <reflow/node/passport_graph.hpp>

#include <graphviz/cgraph.h>
#include <graphviz/gvc.h>

#include <memory>
#include <mutex>
#include <string>

#include <reflow/core/text.hpp>

namespace ingest {
namespace {

// Graphviz keeps global state (its context, the parser's), so one render at a time. The
// context loads its plugins once and lives as long as the process.
std::mutex g_mutex;
GVC_t* g_context = nullptr;
std::string g_messages;  // what Graphviz reported during the current render (under g_mutex)

// Graphviz's errors and warnings go into the error message, not to stderr.
int collect_message(char* message) {
  g_messages += message;
  return 0;
}

}  // namespace

bool can_render_svg() {
  return true;
}

agent::Result<std::string> render_svg(std::string_view dot) {
  std::lock_guard lock(g_mutex);
  g_messages.clear();
  agseterrf(collect_message);
  if (g_context == nullptr) g_context = gvContext();
  if (g_context == nullptr) return agent::fail(agent::ErrorCode::io, "Graphviz: no context");
  const std::string text(dot);  // agmemread reads a C string
  std::unique_ptr<Agraph_t, int (*)(Agraph_t*)> graph(agmemread(text.c_str()), agclose);
  if (!graph)
    return agent::fail(
        agent::ErrorCode::invalid_argument,
        "Graphviz: the DOT text does not parse: " + agent::printable_text(g_messages));
  if (gvLayout(g_context, graph.get(), "dot") != 0)
    return agent::fail(agent::ErrorCode::io, "Graphviz: the \"dot\" layout failed");
  char* data = nullptr;
  unsigned int length = 0;
  const int rendered = gvRenderData(g_context, graph.get(), "svg", &data, &length);
  std::string svg = rendered == 0 && data != nullptr ? std::string(data, length) : std::string();
  gvFreeRenderData(data);
  gvFreeLayout(g_context, graph.get());
  if (rendered != 0 || svg.empty())
    return agent::fail(agent::ErrorCode::io,
                       "Graphviz: rendering SVG failed (is the core plugin installed?)");
  const auto start = svg.find("<svg");
  if (start == std::string::npos)
    return agent::fail(agent::ErrorCode::io, "Graphviz: the SVG has no <svg> element");
  return svg.substr(start);
}

}  // namespace ingest
