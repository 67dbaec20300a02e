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

// The spacing of about `want` ticks over [lo, hi]: 1, 2 or 5 × 10^k.
double tick_step(double lo, double hi, int want) {
  const double raw = (hi - lo) / std::max(1, want);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0})
    if (raw <= m * mag) return m * mag;
  return 10 * mag;
}

// Tick positions covering [lo, hi] (lo < hi, finite) at tick_step's spacing;
// counted as integers, so a range of a few ulps cannot loop forever.
std::vector<double> nice_ticks(double lo, double hi, int want) {
  const double step = tick_step(lo, hi, want);
  const double first = std::ceil(lo / step), last = std::floor(hi / step + 1e-9);
  std::vector<double> ticks;
  for (double k = first; k <= last && ticks.size() < 50; k += 1) ticks.push_back(k == 0 ? 0.0 : k * step);
  return ticks;
}

// As many significant digits as the spacing needs, so neighbouring ticks differ (1.5e+05, 2e+05).
std::string tick_label(double v, double step) {
  const double a = std::abs(v);
  if (a == 0) return "0";
  const int digits = std::clamp(static_cast<int>(std::floor(std::log10(a)) - std::floor(std::log10(step))) + 1, 1, 10);
  return fmt::format("{:.{}g}", v, std::max(digits, a >= 1e5 || a < 1e-3 ? 1 : 4));
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
  auto flat = [](double lo, double hi) { return hi - lo <= 1e-9 * std::max({std::abs(lo), std::abs(hi), 1e-300}); };
  if (flat(ly0, ly1)) {  // a flat series: a unit band around it
    const double pad = std::max(0.5, std::abs(ly0) * 0.1);
    ly0 -= pad, ly1 += pad;
  }
  const double pad = 0.05 * (ly1 - ly0);
  ly0 -= pad, ly1 += pad;
  if (!log_y && y0 >= 0 && ly0 < 0) ly0 = 0;
  if (flat(x0, x1)) {
    const double pad = std::max(1.0, std::abs(x0) * 0.1);
    x0 -= pad, x1 += pad;
  }
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return top + (1 - (fy(y) - ly0) / (ly1 - ly0)) * ph; };

  svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" class=\"plot\"/>\n", left, top, pw, ph);
  const double x_step = tick_step(x0, x1, 6);
  for (double t : nice_ticks(x0, x1, 6)) {
    const double x = px(t);
    svg += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" class=\"grid\"/><text x=\"{0:.1f}\" "
                       "y=\"{3}\" class=\"tick\" text-anchor=\"middle\">{4}</text>\n",
                       x, top, top + ph, top + ph + 14, tick_label(t, x_step));
  }
  std::vector<double> yt = nice_ticks(ly0, ly1, 5);
  double y_step = tick_step(ly0, ly1, 5);  // of the values, for their labels
  if (log_y) {  // decades; under two of them, rounded values (2, 3, 4, ...) at their log positions
    std::vector<double> decades;
    for (double t = std::ceil(ly0); t <= ly1; t += 1) decades.push_back(t);
    yt = decades;
    y_step = 0;  // decades: one digit
    if (decades.size() < 2) {
      yt.clear();
      y_step = tick_step(std::pow(10.0, ly0), std::pow(10.0, ly1), 5);
      for (double v : nice_ticks(std::pow(10.0, ly0), std::pow(10.0, ly1), 5))
        if (v > 0) yt.push_back(std::log10(v));
    }
  }
  for (double t : yt) {
    const double value = log_y ? std::pow(10.0, t) : t;
    const double y = top + (1 - (t - ly0) / (ly1 - ly0)) * ph;
    svg += fmt::format("<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" class=\"grid\"/><text x=\"{3}\" "
                       "y=\"{4:.1f}\" class=\"tick\" text-anchor=\"end\">{5}</text>\n",
                       left, y, left + pw, left - 6, y + 4, tick_label(value, y_step > 0 ? y_step : std::abs(value)));
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
