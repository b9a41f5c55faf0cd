// SPDX-License-Identifier: AGPL-3.0-or-later
// render_svg in a build without libgraphviz (REFLOW_GRAPHVIZ=OFF): the passport page shows the
// trace as text instead.
#include <reflow/node/passport_graph.hpp>

namespace ingest {

bool can_render_svg() {
  return false;
}

agent::Result<std::string> render_svg(std::string_view) {
  return agent::fail(agent::ErrorCode::invalid_config,
                     "this reflow-ingest was built without Graphviz: build it with "
                     "-DREFLOW_GRAPHVIZ=ON (Debian: libgraphviz-dev) to draw passports");
}

}  // namespace ingest
