package main

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const resultsHeader = "config\tconns\tround\trps\tp50_us\tp99_us\tcpu_us_per_req\trss_kb\tnon2xx\tsockerr\n"
const latencyHeader = "config\tconns\tround\tpercentile\tlatency_us\n"

// writeSet writes results.tsv and latency.tsv into a new directory.
func writeSet(t *testing.T, results, latency string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{"results.tsv": results, "latency.tsv": latency} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// sampleSet is a small run: three configs at 8 and 32 connections, three
// rounds, and a config that measured nothing.
func sampleSet(t *testing.T) string {
	t.Helper()
	var r, l strings.Builder
	r.WriteString(resultsHeader)
	l.WriteString(latencyHeader)
	for round := 1; round <= 3; round++ {
		for _, conns := range []int{8, 32} {
			for i, config := range []string{"local", "bare", "redis"} {
				rps := float64(conns*1000) * (1 - 0.1*float64(i)) * (1 + 0.01*float64(round))
				p99 := float64(conns*100) * (1 + 0.2*float64(i)) * float64(round)
				fmt.Fprintf(&r, "%s\t%d\t%d\t%.1f\t100\t%.0f\t70.5\t40000\t0\t0\n", config, conns, round, rps, p99)
				for _, pct := range []string{"0", "50", "75", "90", "99", "99.9", "99.99", "100"} {
					fmt.Fprintf(&l, "%s\t%d\t%d\t%s\t%d\n", config, conns, round, pct, (i+1)*round*len(pct)*100)
				}
			}
		}
	}
	r.WriteString("ghost\t8\t1\t-\t-\t-\t-\t-\t0\t0\n")
	return writeSet(t, r.String(), l.String())
}

func TestMediansOverRounds(t *testing.T) {
	dir := writeSet(t,
		resultsHeader+
			"local\t32\t1\t100\t1\t900\t1\t1\t0\t0\n"+
			"local\t32\t2\t200\t1\t1100\t1\t1\t0\t0\n"+
			"\n# a comment\n"+
			"bare\t32\t1\t300\t1\t500\t1\t1\t0\t0\n"+
			"bare\t32\t2\t100\t1\t700\t1\t1\t0\t0\n"+
			"bare\t32\t3\t200\t1\t600\t1\t1\t0\t0\n"+
			"ghost\t32\t1\tnan\t1\t-\t1\t1\t0\t0\n",
		latencyHeader+
			"bare\t32\t1\t99\t900\n"+
			"bare\t32\t2\t99\t700\n"+
			"bare\t32\t3\t99\t800\n"+
			"bare\t32\t1\t100\t5000\n"+
			"bare\t32\t2\t100\t-\n")
	res, err := load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(res.configs, ","); got != "bare,local" {
		t.Errorf("configs %s, want bare first, then local, and no ghost (it has no data)", got)
	}
	for _, c := range []struct {
		what string
		vs   []float64
		want float64
	}{
		{"bare req/s (3 rounds)", res.rps[runKey{"bare", 32}], 200},
		{"bare p99 (3 rounds)", res.p99us[runKey{"bare", 32}], 600},
		{"local req/s (2 rounds)", res.rps[runKey{"local", 32}], 150},
		{"local p99 (2 rounds)", res.p99us[runKey{"local", 32}], 1000},
		{"bare latency p99", res.latus[pctKey{"bare", 32, 99}], 800},
		{"bare latency max, one round missing", res.latus[pctKey{"bare", 32, 100}], 5000},
	} {
		if len(c.vs) == 0 {
			t.Errorf("%s: no values", c.what)
			continue
		}
		if got := median(c.vs); got != c.want {
			t.Errorf("%s: median %v, want %v", c.what, got, c.want)
		}
	}

	st := styles(res.configs)
	ch, err := p99Chart(res, st, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := ch.series[0].pts; len(got) != 1 || got[0] != (xy{32, 0.6}) {
		t.Errorf("bare's p99 points %v, want one at 32 connections, 0.6 ms", got)
	}
	if ch.subtitle != "median of 3 rounds" {
		t.Errorf("subtitle %q", ch.subtitle)
	}
}

func TestBadInputNamesFileAndLine(t *testing.T) {
	good := resultsHeader + "bare\t8\t1\t100\t1\t900\t1\t1\t0\t0\n"
	goodLat := latencyHeader + "bare\t8\t1\t50\t100\n"
	for _, c := range []struct {
		name, results, latency string
		want                   []string
	}{
		{"rps not a number", resultsHeader + "bare\t8\t1\t100\t1\t900\t1\t1\t0\t0\n\nbare\t8\t2\tfast\t1\t900\t1\t1\t0\t0\n", goodLat,
			[]string{"results.tsv line 4", `rps is "fast"`}},
		{"too few fields", good + "bare\t8\t2\t100\n", goodLat,
			[]string{"results.tsv line 3", "4 fields", "header has 10"}},
		{"conns not whole", resultsHeader + "bare\t8.5\t1\t100\t1\t900\t1\t1\t0\t0\n", goodLat,
			[]string{"results.tsv line 2", "conns"}},
		{"negative rps", resultsHeader + "bare\t8\t1\t-5\t1\t900\t1\t1\t0\t0\n", goodLat,
			[]string{"results.tsv line 2", "below 0"}},
		{"round twice", good + "bare\t8\t1\t100\t1\t900\t1\t1\t0\t0\n", goodLat,
			[]string{"results.tsv line 3", "already on line 2"}},
		{"no p99 column", "config\tconns\tround\trps\n", goodLat,
			[]string{"results.tsv line 1", `no column "p99_us"`}},
		{"empty results", "", goodLat,
			[]string{"results.tsv", "empty"}},
		{"percentile out of range", good, latencyHeader + "bare\t8\t1\t101\t100\n",
			[]string{"latency.tsv line 2", "percentile"}},
		{"latency not a number", good, latencyHeader + "bare\t8\t1\t50\t1e400\n",
			[]string{"latency.tsv line 2", "latency_us"}},
		{"no measurements at all", resultsHeader, goodLat,
			[]string{"results.tsv"}},
		{"latency without data", good, latencyHeader,
			[]string{"latency.tsv has no measurements"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := writeSet(t, c.results, c.latency)
			err := run([]string{"-in", dir, "-out", t.TempDir()}, &bytes.Buffer{})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestMissingFileIsNamed(t *testing.T) {
	dir := t.TempDir()
	err := run([]string{"-in", dir}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "results.tsv")) {
		t.Errorf("error %v does not name results.tsv", err)
	}
	os.WriteFile(filepath.Join(dir, "results.tsv"), []byte(resultsHeader+"bare\t8\t1\t100\t1\t900\t1\t1\t0\t0\n"), 0o644)
	err = run([]string{"-in", dir}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "latency.tsv")) {
		t.Errorf("error %v does not name latency.tsv", err)
	}
	if err := run(nil, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "-in") {
		t.Errorf("without -in: %v", err)
	}
}

func TestWritesThreePNGs(t *testing.T) {
	in, out := sampleSet(t), filepath.Join(t.TempDir(), "plots")
	if err := run([]string{"-in", in, "-out", out, "-title", "test run"}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"rps.png", "p99.png", "latency.png"} {
		f, err := os.Open(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b := img.Bounds(); b.Dx() != plotW || b.Dy() != plotH {
			t.Errorf("%s is %v, want %d×%d", name, b.Size(), plotW, plotH)
		}
	}
	if leftovers, _ := filepath.Glob(filepath.Join(out, ".plot-*")); len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

// count is how many pixels of r in img have exactly the colour col.
func count(img *image.RGBA, r image.Rectangle, col color.RGBA) int {
	n := 0
	r = r.Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			if img.RGBAAt(x, y) == col {
				n++
			}
		}
	}
	return n
}

func TestEachConfigIsDrawnAndInTheLegend(t *testing.T) {
	res, err := load(sampleSet(t))
	if err != nil {
		t.Fatal(err)
	}
	st := styles(res.configs)
	rps, err := rpsChart(res, st, "")
	if err != nil {
		t.Fatal(err)
	}
	p99, err := p99Chart(res, st, "")
	if err != nil {
		t.Fatal(err)
	}
	lat, err := latencyChart(res, st, defaultConns(res), "")
	if err != nil {
		t.Fatal(err)
	}
	ghost := styles([]string{"ghost"})["ghost"].col
	for _, ch := range []*chart{rps, p99, lat} {
		c, lay := ch.draw()
		t.Run(ch.title, func(t *testing.T) {
			if got := ch.series[0].name; got != "bare" {
				t.Errorf("first series %s, want bare", got)
			}
			if len(ch.series) != 3 {
				t.Errorf("%d series, want bare, local and redis", len(ch.series))
			}
			// The legend's rows, top to bottom, each with a patch of its colour.
			for i, s := range ch.series {
				row := image.Rect(lay.legend.Min.X, lay.legend.Min.Y+legendPad+i*legendRow-4,
					lay.legend.Max.X, lay.legend.Min.Y+legendPad+i*legendRow+textHeight(textScale))
				if n := count(c.img, row, s.style.col); n < 60 {
					t.Errorf("legend row %d has %d pixels of %s's colour", i, n, s.name)
				}
				if n := count(c.img, lay.plot, s.style.col); n < 100 {
					t.Errorf("the plot area has %d pixels of %s's colour", n, s.name)
				}
			}
			if n := count(c.img, c.img.Bounds(), ghost); n > 0 {
				t.Errorf("%d pixels of the colour of ghost, which has no data", n)
			}
			if lay.legend.Overlaps(lay.plot) {
				t.Errorf("legend %v covers the plot area %v", lay.legend, lay.plot)
			}
		})
	}
}

func TestColoursFollowTheName(t *testing.T) {
	a := styles([]string{"bare", "local", "redis", "postgres", "keys1m", "flood", "alpha", "beta", "gamma"})
	b := styles([]string{"flood", "beta", "local", "bare"})
	if a["bare"].col != black {
		t.Errorf("bare is %v, want black", a["bare"].col)
	}
	for _, name := range []string{"bare", "local", "flood", "beta"} {
		if a[name] != b[name] {
			t.Errorf("%s is %v in one set and %v in another", name, a[name], b[name])
		}
	}
	seen := map[color.RGBA]string{}
	for name, s := range a {
		if other, dup := seen[s.col]; dup {
			t.Errorf("%s and %s have the same colour", name, other)
		}
		seen[s.col] = name
		if s.col != black && s.col.R > 230 && s.col.G > 230 && s.col.B > 230 {
			t.Errorf("%s's colour %v is too light to read on white", name, s.col)
		}
		if s.width < 2 {
			t.Errorf("%s's line is %v px wide", name, s.width)
		}
	}
}

func TestLinesAreAtLeastTwoPixelsWide(t *testing.T) {
	red := color.RGBA{255, 0, 0, 255}
	for _, st := range []style{bareStyle, sized(palette[0])} {
		c := newCanvas(50, 50, white)
		c.line(5, 20, 45, 20, st.width, red)
		c.line(20, 5, 20, 45, st.width, red)
		if n := count(c.img, image.Rect(30, 0, 31, 50), red); n < 2 {
			t.Errorf("a horizontal line of width %v covers %d pixels of a column", st.width, n)
		}
		if n := count(c.img, image.Rect(0, 30, 50, 31), red); n < 2 {
			t.Errorf("a vertical line of width %v covers %d pixels of a row", st.width, n)
		}
	}
}

func TestLatencyAxisInNines(t *testing.T) {
	res, err := load(sampleSet(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := defaultConns(res); got != 32 {
		t.Errorf("default concurrency %d, want 32", got)
	}
	st := styles(res.configs)
	ch, err := latencyChart(res, st, 8, "")
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, tk := range ch.x.ticks {
		labels = append(labels, tk.label)
	}
	if got := strings.Join(labels, " "); got != "50% 90% 99% 99.9% 99.99% max" {
		t.Errorf("x ticks %q", got)
	}
	bare := ch.series[0].pts
	if len(bare) != 7 {
		t.Fatalf("bare has %d points, want 50%% to max without the minimum: %v", len(bare), bare)
	}
	if math.Abs(bare[3].x-2) > 1e-9 {
		t.Errorf("99%% drawn at %v nines, want 2", bare[3].x)
	}
	if last := bare[len(bare)-1]; last.x <= 4 || last.x >= ch.x.hi {
		t.Errorf("max drawn at %v, want between 99.99%% (4) and the end of the axis (%v)", last.x, ch.x.hi)
	}
	if ch.y.log || ch.y.lo != 0 {
		t.Errorf("y axis log %v from %v: the values span less than two decades, want linear from 0", ch.y.log, ch.y.lo)
	}
	// bare's p99 at 8 connections: rounds 1..3 gave 400, 800, 1200 µs.
	if bare[3].y != 0.8 {
		t.Errorf("bare's p99 %v ms, want the median 0.8", bare[3].y)
	}

	// A maximum far above the rest turns the y axis logarithmic.
	res.latus[pctKey{"redis", 8, 100}] = []float64{1e6}
	if ch, _ := latencyChart(res, st, 8, ""); !ch.y.log || ch.y.lo > 0.1 || ch.y.hi < 1000 {
		t.Errorf("with a 1 s maximum: y axis log %v from %v to %v", ch.y.log, ch.y.lo, ch.y.hi)
	}

	if _, err := latencyChart(res, st, 64, ""); err == nil || !strings.Contains(err.Error(), "it has 8, 32") {
		t.Errorf("at 64 connections: %v", err)
	}
	delete32 := func() {
		for k := range res.latus {
			if k.conns == 32 {
				delete(res.latus, k)
			}
		}
	}
	delete32()
	res.latus[pctKey{"bare", 128, 50}] = []float64{1}
	if got := defaultConns(res); got != 8 {
		t.Errorf("without 32, default concurrency %d, want 8 (most data)", got)
	}
}

func TestTicksAreRound(t *testing.T) {
	a := linearAxis("req/s", 23456)
	var labels []string
	for _, tk := range a.ticks {
		labels = append(labels, tk.label)
	}
	if got := strings.Join(labels, " "); got != "0 5,000 10,000 15,000 20,000 25,000" {
		t.Errorf("ticks up to 23,456: %s", got)
	}
	if a.lo != 0 || a.hi != 25000 {
		t.Errorf("axis from %v to %v", a.lo, a.hi)
	}
	a = linearAxis("ms", 1.3)
	labels = nil
	for _, tk := range a.ticks {
		labels = append(labels, tk.label)
	}
	if got := strings.Join(labels, " "); got != "0 0.5 1.0 1.5" {
		t.Errorf("ticks up to 1.3: %s", got)
	}
	a = logAxis("ms", 0.15, 43)
	labels = nil
	for _, tk := range a.ticks {
		labels = append(labels, tk.label)
	}
	if got := strings.Join(labels, " "); got != "0.1 0.2 0.5 1 2 5 10 20 50" {
		t.Errorf("log ticks from 0.15 to 43: %s", got)
	}
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -2500: "-2,500"} {
		if got := formatNumber(v, 0); got != want {
			t.Errorf("formatNumber(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestFontCoversEverythingDrawn(t *testing.T) {
	for r := rune(' '); r <= '~'; r++ {
		if _, ok := glyphs[r]; !ok {
			t.Errorf("no glyph for %q", r)
		}
	}
	// Everything the plots write, with a -title using the characters
	// such a line would.
	res, err := load(sampleSet(t))
	if err != nil {
		t.Fatal(err)
	}
	res.latus[pctKey{"bare", 8, 100}] = []float64{5e6} // a log axis too
	st := styles(res.configs)
	title := "2 cores, wrk -t1 -c32 (5 rounds × 10 s), 96-byte POST: 100% µs/req"
	var charts []*chart
	for _, f := range []func() (*chart, error){
		func() (*chart, error) { return rpsChart(res, st, title) },
		func() (*chart, error) { return p99Chart(res, st, title) },
		func() (*chart, error) { return latencyChart(res, st, 8, title) },
		func() (*chart, error) { return latencyChart(res, st, 1000, title) },
	} {
		if ch, err := f(); err == nil {
			charts = append(charts, ch)
		}
	}
	var drawn []string
	for _, ch := range charts {
		c, _ := ch.draw()
		drawn = append(drawn, c.texts...)
	}
	if len(drawn) < 30 {
		t.Fatalf("only %d strings drawn", len(drawn))
	}
	for _, s := range drawn {
		for _, r := range s {
			if _, ok := glyphs[r]; !ok {
				t.Errorf("no glyph for %q in %q", r, s)
			}
		}
	}
	if glyphFor('€') != glyphs['?'] {
		t.Error("a rune without a glyph does not print as '?'")
	}
	// 'l', '1' and 'I' must differ: config names like keys1m use them.
	if glyphs['l'] == glyphs['1'] || glyphs['l'] == glyphs['I'] || glyphs['0'] == glyphs['O'] {
		t.Error("look-alike glyphs are identical")
	}
}

func TestPNGKeepsEveryColour(t *testing.T) {
	res, err := load(sampleSet(t))
	if err != nil {
		t.Fatal(err)
	}
	ch, err := rpsChart(res, styles(res.configs), "")
	if err != nil {
		t.Fatal(err)
	}
	c, _ := ch.draw()
	p, ok := paletted(c.img).(*image.Paletted)
	if !ok {
		t.Fatal("a chart has more than 256 colours")
	}
	for i := 0; i < len(p.Pix); i += 7 { // a sample, to stay quick
		x, y := i%plotW, i/plotW
		if got, want := p.At(x, y), c.img.RGBAAt(x, y); color.RGBAModel.Convert(got) != want {
			t.Fatalf("pixel %d,%d is %v in the PNG, %v as drawn", x, y, got, want)
		}
	}
}
