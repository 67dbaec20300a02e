// Line charts as inline SVG: no script, no network, one string to embed in
// an HTML page.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "forge/export.h"

namespace forge {

struct FORGE_API ChartSeries {
  std::string label;
  std::string color;                               // CSS colour
  std::vector<std::pair<double, double>> points;  // (x, y), x ascending
  bool markers = false;                            // a dot at each point (sparse series: evaluations)
};

struct FORGE_API ChartOptions {
  std::string title;
  std::string x_label = "step";
  int width = 560;
  int height = 260;
  bool log_y = false;  // every y > 0 is plotted on a log scale; falls back to linear otherwise
};

// An <svg> element: axes with rounded ticks, one polyline per series, a
// legend. Non-finite points are left out. Empty series are skipped; with no
// point at all, the chart says "no data".
FORGE_API std::string svg_line_chart(const std::vector<ChartSeries>& series, const ChartOptions& options);

// Text escaped for HTML element content and attribute values.
FORGE_API std::string html_escape(const std::string& text);

}  // namespace forge
