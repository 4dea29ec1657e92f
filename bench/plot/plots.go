package main

import (
	"fmt"
	"hash/fnv"
	"image/color"
	"math"
	"slices"
	"strings"
)

// style is how one config is drawn, the same in every plot.
type style struct {
	col    color.RGBA
	mark   marker
	width  float64 // of its line, pixels
	radius float64 // of its points, pixels
}

// palette holds the configs' colours, each dark enough to read on white
// and with its own point shape, for readers who cannot tell the colours
// apart. The first ones belong to the configs bench/perf.sh knows (named
// in knownConfigs); any other config takes one of the rest, chosen by its
// name.
var palette = []style{
	{col: color.RGBA{0, 114, 178, 255}, mark: markCircle},        // blue
	{col: color.RGBA{213, 94, 0, 255}, mark: markDiamond},        // vermilion
	{col: color.RGBA{0, 150, 110, 255}, mark: markTriangle},      // green
	{col: color.RGBA{140, 80, 180, 255}, mark: markTriangleDown}, // purple
	{col: color.RGBA{225, 155, 0, 255}, mark: markSquare},        // orange
	{col: color.RGBA{86, 170, 225, 255}, mark: markDiamond},      // sky blue
	{col: color.RGBA{204, 100, 160, 255}, mark: markCircle},      // pink
	{col: color.RGBA{140, 86, 75, 255}, mark: markTriangle},      // brown
	{col: color.RGBA{140, 145, 20, 255}, mark: markTriangleDown}, // olive
	{col: color.RGBA{20, 160, 170, 255}, mark: markSquare},       // teal
	{col: color.RGBA{170, 30, 60, 255}, mark: markCircle},        // crimson
	{col: color.RGBA{120, 120, 120, 255}, mark: markDiamond},     // grey
}

var knownConfigs = []string{"local", "redis", "postgres", "keys1m", "flood"}

// bareStyle draws bare Caddy: black, square points and a wider line, so
// that a gateway line lying on top of it still shows it at its edges.
var bareStyle = style{col: black, mark: markSquare, width: 4, radius: 6}

// styles gives each config its style. Bare Caddy and the known configs
// always get the same; any other config gets the palette entry its name
// hashes to, or the next one free when another unknown config in the
// same set took it first (in sorted order), so a set of names always gets
// the same colours.
func styles(configs []string) map[string]style {
	out := map[string]style{}
	taken := map[int]bool{}
	var others []string
	for _, name := range configs {
		switch i := slices.Index(knownConfigs, name); {
		case name == bareConfig:
			out[name] = bareStyle
		case i >= 0:
			out[name] = sized(palette[i])
		default:
			others = append(others, name)
		}
	}
	slices.Sort(others)
	free := len(palette) - len(knownConfigs)
	for n, name := range others {
		h := fnv.New32a()
		h.Write([]byte(name))
		slot := int(h.Sum32() % uint32(free))
		// Look for a free slot, unless there are more names than slots.
		for tries := 0; taken[slot] && n < free && tries < free; tries++ {
			slot = (slot + 1) % free
		}
		taken[slot] = true
		out[name] = sized(palette[len(knownConfigs)+slot])
	}
	return out
}

func sized(s style) style {
	s.width, s.radius = 2.5, 5
	return s
}

// byConcurrency is the chart of one measurement's median against the
// concurrency, one series per config; scale turns the stored value into
// the one drawn.
func byConcurrency(res *results, st map[string]style, values map[runKey][]float64, scale float64, title, ytitle, subtitle string) (*chart, error) {
	ch := &chart{title: title}
	top := 0.0
	conns := concurrencies(values, func(k runKey) int { return k.conns })
	for _, config := range res.configs {
		s := series{name: config, style: st[config]}
		for _, conns := range conns {
			if vs := values[runKey{config, conns}]; len(vs) > 0 {
				s.pts = append(s.pts, xy{float64(conns), median(vs) * scale})
				top = max(top, s.pts[len(s.pts)-1].y)
			}
		}
		if len(s.pts) > 0 {
			ch.series = append(ch.series, s)
		}
	}
	if len(ch.series) == 0 {
		return nil, fmt.Errorf("no %s in results.tsv", strings.ToLower(ytitle))
	}
	ch.subtitle = withRounds(subtitle, maxLen(values))
	ch.x = concurrencyAxis(conns)
	ch.y = linearAxis(ytitle, top)
	return ch, nil
}

func rpsChart(res *results, st map[string]style, subtitle string) (*chart, error) {
	return byConcurrency(res, st, res.rps, 1, "Requests per second by concurrency", "requests per second", subtitle)
}

func p99Chart(res *results, st map[string]style, subtitle string) (*chart, error) {
	return byConcurrency(res, st, res.p99us, 1e-3, "p99 latency by concurrency", "p99 latency (ms)", subtitle)
}

// concurrencyAxis is a log2 axis with a tick at each concurrency measured,
// a little room left at either end.
func concurrencyAxis(conns []int) axis {
	a := axis{title: "connections (wrk -c, log scale)", log: true, breakAt: math.NaN()}
	lo, hi := float64(conns[0]), float64(conns[len(conns)-1])
	pad := math.Max(math.Log2(hi/lo)*0.06, 0.5)
	a.lo, a.hi = lo/math.Exp2(pad), hi*math.Exp2(pad)
	for _, c := range conns {
		a.ticks = append(a.ticks, tick{float64(c), formatNumber(float64(c), 0)})
	}
	return a
}

// The latency plot's x axis is in "nines": a percentile p sits at
// -log10(1 - p/100), so 90% is at 1, 99% at 2, 99.9% at 3. The maximum
// (100%) has no such place and is drawn maxGap past the last finite tick.
const maxGap = 0.9

var ninesTicks = []struct {
	pct   float64
	label string
}{{50, "50%"}, {90, "90%"}, {99, "99%"}, {99.9, "99.9%"}, {99.99, "99.99%"}}

func nines(pct float64) float64 { return -math.Log10(1 - pct/100) }

// latencyChart draws each config's latency distribution at conns: the
// median over rounds of each percentile from 50% up to the maximum. Its y
// axis is linear from 0, or logarithmic when the values drawn span more
// than two decades (a maximum a hundred times the median), which would
// flatten everything but the maximum against the floor.
func latencyChart(res *results, st map[string]style, conns int, subtitle string) (*chart, error) {
	at := concurrencies(res.latus, func(k pctKey) int { return k.conns })
	if len(at) == 0 {
		return nil, fmt.Errorf("latency.tsv has no measurements")
	}
	if !slices.Contains(at, conns) {
		return nil, fmt.Errorf("latency.tsv has no data at %d connections (it has %s)", conns, joinInts(at))
	}
	// Where the maximum goes: after the highest percentile below 100 drawn.
	lastFinite := nines(ninesTicks[len(ninesTicks)-1].pct)
	rounds := 0
	for k, vs := range res.latus {
		if k.conns == conns && k.pct >= 50 && k.pct < 100 {
			lastFinite = max(lastFinite, nines(k.pct))
		}
		if k.conns == conns {
			rounds = max(rounds, len(vs))
		}
	}
	maxAt := lastFinite + maxGap

	ch := &chart{
		title:    fmt.Sprintf("Latency distribution at %s", plural(conns, "connection")),
		subtitle: withRounds(subtitle, rounds),
	}
	lo, hi := math.Inf(1), 0.0
	for _, config := range res.configs {
		s := series{name: config, style: st[config]}
		var pcts []float64
		for k := range res.latus {
			if k.config == config && k.conns == conns && k.pct >= 50 {
				pcts = append(pcts, k.pct)
			}
		}
		slices.Sort(pcts)
		for _, pct := range pcts {
			x := maxAt
			if pct < 100 {
				x = nines(pct)
			}
			ms := median(res.latus[pctKey{config, conns, pct}]) / 1000
			s.pts = append(s.pts, xy{x, ms})
			if ms > 0 {
				lo = min(lo, ms)
			}
			hi = max(hi, ms)
		}
		if len(s.pts) > 0 {
			ch.series = append(ch.series, s)
		}
	}
	if len(ch.series) == 0 {
		return nil, fmt.Errorf("latency.tsv has no percentile from 50 to 100 at %d connections", conns)
	}

	if hi > 0 && lo < math.Inf(1) && hi/lo > 100 {
		ch.y = logAxis("latency (ms, log scale)", lo, hi)
		// A zero has no place on a log scale: draw it at the bottom.
		for i := range ch.series {
			for j := range ch.series[i].pts {
				ch.series[i].pts[j].y = max(ch.series[i].pts[j].y, ch.y.lo)
			}
		}
	} else {
		ch.y = linearAxis("latency (ms)", hi)
	}
	ch.x = axis{title: "percentile (each step right is ten times rarer)", lo: nines(50) - 0.2, hi: maxAt + 0.2, breakAt: lastFinite + maxGap/2}
	for _, t := range ninesTicks {
		ch.x.ticks = append(ch.x.ticks, tick{nines(t.pct), t.label})
	}
	ch.x.ticks = append(ch.x.ticks, tick{maxAt, "max"})
	return ch, nil
}

// defaultConns is the concurrency the latency plot shows without -conns:
// 32 when latency.tsv has it, or else the one with the most values (the
// highest of those tied).
func defaultConns(res *results) int {
	count := map[int]int{}
	for k, vs := range res.latus {
		count[k.conns] += len(vs)
	}
	if count[32] > 0 {
		return 32
	}
	best := 0
	for c, n := range count {
		if n > count[best] || (n == count[best] && c > best) {
			best = c
		}
	}
	return best
}

func withRounds(subtitle string, rounds int) string {
	s := "median of " + plural(rounds, "round")
	if subtitle != "" {
		return subtitle + "; " + s
	}
	return s
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func maxLen[K comparable](m map[K][]float64) int {
	n := 0
	for _, vs := range m {
		n = max(n, len(vs))
	}
	return n
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = fmt.Sprint(n)
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
