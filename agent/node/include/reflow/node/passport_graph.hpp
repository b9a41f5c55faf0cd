// SPDX-License-Identifier: AGPL-3.0-or-later
#pragma once

#include <string>
#include <string_view>

#include <reflow/core/result.hpp>
#include <reflow/node/query.hpp>

/// The material passport drawn as a graph (issue 20): a trace (query.hpp) as Graphviz DOT text,
/// and DOT laid out and rendered to SVG in memory by Debian's libgraphviz (cgraph + gvc). The web
/// page (`/passport`) puts the SVG inline.
namespace ingest {

/// DOT text (graphviz.org/doc/info/lang.html) of the trace `root`: one node per resource,
/// process and event (a resource or process met twice in the trace is one node), an edge from
/// each trace child to its parent, so that arrows run the way material went (rankdir=LR).
/// Node names are our own (`n1`, `n2` …); every string that came from a device (references,
/// actions, quantities, times, notes) is only ever inside a double-quoted label or URL, with
/// printable_text's escapes (no control characters, no invalid UTF-8) and then `\` and `"`
/// escaped, so it can neither end the string nor become a Graphviz escape (`\N`, `\G` …) nor
/// an HTML-like label (those need `<…>` instead of quotes). Notes are cut to 40 bytes.
/// Nodes link to the page (URL attributes, relative): a resource to `/events?resource=REF`,
/// an event to `/event?device=D&amp;stream=S&amp;seq=N` (when its payload has stream and seq;
/// the `&` already XML-escaped, which Graphviz keeps), a process to `/events?process=REF`; the
/// parts URL-encoded. Tooltips are the plain reference or `event ID` (Graphviz would otherwise
/// show the label with its escapes).
std::string passport_dot(const TraceNode& root);

/// Whether this build can render SVG (REFLOW_GRAPHVIZ: Debian's libgraphviz-dev was found).
bool can_render_svg();

/// `dot` laid out with Graphviz's "dot" engine and rendered as SVG (gvRenderData), from the
/// `<svg` element on (without the XML declaration, DOCTYPE and comment before it), ready to be
/// put inline in HTML. Graphviz writes label text and URLs XML-escaped. Serialised by a mutex
/// (Graphviz keeps global state), so callable from any thread.
/// Errors: invalid_argument when `dot` does not parse; io when layout or rendering fails;
/// unsupported when the build has no Graphviz (REFLOW_GRAPHVIZ=OFF).
agent::Result<std::string> render_svg(std::string_view dot);

}  // namespace ingest
