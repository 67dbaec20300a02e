#include "core/reporting/svg_chart.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace forge {

std::string html_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

// Tick positions covering [lo, hi] at a 1, 2 or 5 × 10^k spacing, about `want` of them.
std::vector<double> nice_ticks(double lo, double hi, int want) {
  const double span = hi - lo;
  const double raw = span / std::max(1, want);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push_back(std::abs(t) < step * 1e-9 ? 0 : t);
  return ticks;
}

std::string tick_label(double v) {
  const double a = std::abs(v);
  if (a != 0 && (a >= 1e5 || a < 1e-3)) return fmt::format("{:.0e}", v);
  return fmt::format("{:.4g}", v);
}

}  // namespace

std::string svg_line_chart(const std::vector<ChartSeries>& series, const ChartOptions& o) {
  const double left = 62, right = 22, top = 30, bottom = 40;
  const double pw = o.width - left - right, ph = o.height - top - bottom;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  bool all_positive = true;
  for (const auto& s : series)
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
      all_positive = all_positive && y > 0;
    }
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "role=\"img\" aria-label=\"{2}\">\n<text x=\"{3}\" y=\"18\" class=\"chart-title\">{2}</text>\n",
      o.width, o.height, html_escape(o.title), left);
  if (!std::isfinite(x0)) {
    svg += fmt::format("<text x=\"{}\" y=\"{}\" class=\"no-data\">no data</text>\n</svg>\n", o.width / 2 - 25, o.height / 2);
    return svg;
  }
  const bool log_y = o.log_y && all_positive;
  auto fy = [&](double y) { return log_y ? std::log10(y) : y; };
  double ly0 = fy(y0), ly1 = fy(y1);
  if (ly1 - ly0 < 1e-12) ly0 -= 0.5, ly1 += 0.5;  // a flat series
  const double pad = 0.05 * (ly1 - ly0);
  ly0 -= pad, ly1 += pad;
  if (!log_y && y0 >= 0 && ly0 < 0) ly0 = 0;
  if (x1 - x0 < 1e-12) x0 -= 1, x1 += 1;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return top + (1 - (fy(y) - ly0) / (ly1 - ly0)) * ph; };

  svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" class=\"plot\"/>\n", left, top, pw, ph);
  for (double t : nice_ticks(x0, x1, 6)) {
    const double x = px(t);
    svg += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" class=\"grid\"/><text x=\"{0:.1f}\" "
                       "y=\"{3}\" class=\"tick\" text-anchor=\"middle\">{4}</text>\n",
                       x, top, top + ph, top + ph + 14, tick_label(t));
  }
  std::vector<double> yt = nice_ticks(ly0, ly1, 5);
  if (log_y) {  // decades; under two of them, rounded values (2, 3, 4, ...) at their log positions
    std::vector<double> decades;
    for (double t = std::ceil(ly0); t <= ly1; t += 1) decades.push_back(t);
    yt = decades;
    if (decades.size() < 2) {
      yt.clear();
      for (double v : nice_ticks(std::pow(10.0, ly0), std::pow(10.0, ly1), 5))
        if (v > 0) yt.push_back(std::log10(v));
    }
  }
  for (double t : yt) {
    const double value = log_y ? std::pow(10.0, t) : t;
    const double y = top + (1 - (t - ly0) / (ly1 - ly0)) * ph;
    svg += fmt::format("<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" class=\"grid\"/><text x=\"{3}\" "
                       "y=\"{4:.1f}\" class=\"tick\" text-anchor=\"end\">{5}</text>\n",
                       left, y, left + pw, left - 6, y + 4, tick_label(value));
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" class=\"axis-label\" text-anchor=\"middle\">{}</text>\n", left + pw / 2,
                     o.height - 6, html_escape(o.x_label));
  double legend_x = left + pw - 8;
  int legend_row = 0;
  for (const auto& s : series) {
    std::string pts;
    int n = 0;
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(x) || !std::isfinite(y) || (log_y && y <= 0)) continue;
      pts += fmt::format("{:.1f},{:.1f} ", px(x), py(y));
      ++n;
    }
    if (n == 0) continue;
    svg += fmt::format("<polyline class=\"series\" data-label=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" "
                       "stroke-linejoin=\"round\" points=\"{}\"/>\n",
                       html_escape(s.label), s.color, pts);
    if (s.markers || n == 1)
      for (const auto& [x, y] : s.points)
        if (std::isfinite(x) && std::isfinite(y) && !(log_y && y <= 0))
          svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", px(x), py(y), s.color);
    const double ly = top + 14 + 16 * legend_row++;
    svg += fmt::format("<text x=\"{0}\" y=\"{1:.1f}\" class=\"legend\" text-anchor=\"end\">{2}</text><line x1=\"{3}\" "
                       "y1=\"{4:.1f}\" x2=\"{5}\" y2=\"{4:.1f}\" stroke=\"{6}\" stroke-width=\"3\"/>\n",
                       legend_x - 22, ly, html_escape(s.label), legend_x - 18, ly - 4, legend_x, s.color);
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace forge
