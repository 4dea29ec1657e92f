// Command plot draws the load tool's results as PNG images, with nothing
// but the standard library and a bitmap font of its own (font.go).
//
//	go run ./bench/plot -in <dir> [-out <dir>] [-conns N] [-title "…"]
//
// It reads <dir>/results.tsv and <dir>/latency.tsv, as bench/perf.sh writes
// them (one line per config, concurrency and round; latency.tsv also per
// percentile), takes the median over the rounds of every value, and writes
// into -out (by default -in):
//
//   - rps.png: requests per second against the number of connections,
//     one line per config. Connections on a log scale, req/s from 0.
//   - p99.png: p99 latency in ms against the number of connections, the
//     same way.
//   - latency.png: each config's latency distribution at -conns
//     connections (by default 32, or else the concurrency with the most
//     data): latency in ms against the percentile, from 50% to the
//     maximum, on a scale of "nines" where 90%, 99%, 99.9% and 99.99% are
//     evenly spaced and the maximum stands a little apart at the right.
//     The latency is on a linear scale from 0, or on a log scale when the
//     values drawn span more than two decades.
//
// Bare Caddy ("bare") is always black, drawn first and listed first; every
// other config has a colour and point shape of its own, the same in every
// plot and every run. -title adds a line under each plot's title, such as
// the machine and the wrk options. A measurement given as "-", "nan" or
// nothing is left out; a config without any is not drawn.
package main

import (
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"os"
	"path/filepath"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
}

// run does what main does, given the command line's arguments.
func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("plot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("in", "", "directory holding results.tsv and latency.tsv (required)")
	out := fs.String("out", "", "directory to write rps.png, p99.png and latency.png into (default: -in)")
	conns := fs.Int("conns", 0, "concurrency of the latency distribution (default: 32, or the one with the most data)")
	title := fs.String("title", "", "line to add under each plot's title, e.g. the machine and wrk options")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run ./bench/plot -in <dir> [-out <dir>] [-conns N] [-title \"…\"]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *in == "" || fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("-in <dir> is required, and nothing else but flags")
	}
	if *out == "" {
		*out = *in
	}

	res, err := load(*in)
	if err != nil {
		return err
	}
	st := styles(res.configs)
	rps, err := rpsChart(res, st, *title)
	if err != nil {
		return err
	}
	p99, err := p99Chart(res, st, *title)
	if err != nil {
		return err
	}
	if *conns == 0 {
		*conns = defaultConns(res)
	}
	lat, err := latencyChart(res, st, *conns, *title)
	if err != nil {
		return err
	}

	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	for name, ch := range map[string]*chart{"rps.png": rps, "p99.png": p99, "latency.png": lat} {
		if err := writePNG(filepath.Join(*out, name), ch); err != nil {
			return err
		}
	}
	return nil
}

// writePNG draws ch into the file at path, replacing it only once the
// image is whole.
func writePNG(path string, ch *chart) error {
	c, _ := ch.draw()
	f, err := os.CreateTemp(filepath.Dir(path), ".plot-*.png")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := png.Encode(f, paletted(c.img)); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// paletted is img with a palette of its colours, exactly the same pixels
// in a quarter of the bytes (the plots have a few dozen colours, no
// blending), which makes the PNG smaller and quicker to write; or img
// itself if it has more colours than a palette holds. img's bounds start
// at (0, 0), as a canvas's do.
func paletted(img *image.RGBA) image.Image {
	out := image.NewPaletted(img.Bounds(), nil)
	index := map[color.RGBA]uint8{}
	last, lastIndex := color.RGBA{}, -1
	for p := 0; p < len(out.Pix); p++ {
		px := img.Pix[4*p : 4*p+4 : 4*p+4]
		col := color.RGBA{px[0], px[1], px[2], px[3]}
		if col != last || lastIndex < 0 {
			i, ok := index[col]
			if !ok {
				if len(out.Palette) == 256 {
					return img
				}
				i = uint8(len(out.Palette))
				index[col] = i
				out.Palette = append(out.Palette, col)
			}
			last, lastIndex = col, int(i)
		}
		out.Pix[p] = uint8(lastIndex)
	}
	return out
}
