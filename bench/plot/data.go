package main

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// bareConfig is the name of the config without the gateway, the one every
// other is compared to.
const bareConfig = "bare"

// runKey names the rounds of one config at one concurrency.
type runKey struct {
	config string
	conns  int
}

// pctKey names one percentile of one config at one concurrency.
type pctKey struct {
	config string
	conns  int
	pct    float64
}

// results is what the load tool measured, every round's value kept.
type results struct {
	configs []string // with data: bare first, then as they first appear
	rps     map[runKey][]float64
	p99us   map[runKey][]float64
	latus   map[pctKey][]float64
}

// load reads dir's results.tsv and latency.tsv.
func load(dir string) (*results, error) {
	res := &results{
		rps:   map[runKey][]float64{},
		p99us: map[runKey][]float64{},
		latus: map[pctKey][]float64{},
	}
	seen := map[string]bool{}
	var order []string
	note := func(config string) {
		if !seen[config] {
			seen[config] = true
			order = append(order, config)
		}
	}

	type roundKey struct {
		runKey
		round int
	}
	first := map[roundKey]int{}
	err := readTSV(filepath.Join(dir, "results.tsv"), []string{"config", "conns", "round", "rps", "p99_us"}, func(r row) error {
		k, round, err := r.run()
		if err != nil {
			return err
		}
		if line, dup := first[roundKey{k, round}]; dup {
			return r.errorf("%s at %d connections, round %d, is already on line %d", k.config, k.conns, round, line)
		}
		first[roundKey{k, round}] = r.line
		rps, ok, err := r.value("rps")
		if err != nil {
			return err
		}
		p99, ok99, err := r.value("p99_us")
		if err != nil {
			return err
		}
		if ok {
			res.rps[k] = append(res.rps[k], rps)
		}
		if ok99 {
			res.p99us[k] = append(res.p99us[k], p99)
		}
		if ok || ok99 {
			note(k.config)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	type latLine struct {
		pctKey
		round int
	}
	firstLat := map[latLine]int{}
	err = readTSV(filepath.Join(dir, "latency.tsv"), []string{"config", "conns", "round", "percentile", "latency_us"}, func(r row) error {
		k, round, err := r.run()
		if err != nil {
			return err
		}
		pct, err := r.number("percentile")
		if err != nil {
			return err
		}
		if pct < 0 || pct > 100 {
			return r.errorf("percentile is %v, not between 0 and 100", pct)
		}
		pk := pctKey{k.config, k.conns, pct}
		if line, dup := firstLat[latLine{pk, round}]; dup {
			return r.errorf("%s at %d connections, round %d, percentile %v, is already on line %d", k.config, k.conns, round, pct, line)
		}
		firstLat[latLine{pk, round}] = r.line
		us, ok, err := r.value("latency_us")
		if err != nil || !ok {
			return err
		}
		res.latus[pk] = append(res.latus[pk], us)
		note(k.config)
		return nil
	})
	if err != nil {
		return nil, err
	}

	if seen[bareConfig] {
		res.configs = append(res.configs, bareConfig)
	}
	for _, c := range order {
		if c != bareConfig {
			res.configs = append(res.configs, c)
		}
	}
	return res, nil
}

// row is one data line of a TSV file, its fields looked up by the header's
// column names.
type row struct {
	file   string
	line   int
	cols   map[string]int
	fields []string
}

func (r row) errorf(format string, args ...any) error {
	return fmt.Errorf("%s line %d: %s", r.file, r.line, fmt.Sprintf(format, args...))
}

func (r row) get(col string) string { return r.fields[r.cols[col]] }

// number is the column's value, which must be a finite number.
func (r row) number(col string) (float64, error) {
	s := r.get(col)
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, r.errorf("%s is %q, not a number", col, s)
	}
	return v, nil
}

// value is a measurement: a number ≥ 0, or nothing (ok false) when the
// field is empty, "-" or "nan" (a round that measured nothing).
func (r row) value(col string) (v float64, ok bool, err error) {
	switch s := strings.ToLower(r.get(col)); s {
	case "", "-", "nan":
		return 0, false, nil
	}
	v, err = r.number(col)
	if err == nil && v < 0 {
		err = r.errorf("%s is %v, below 0", col, v)
	}
	return v, err == nil, err
}

// whole is the column's value, which must be a whole number ≥ least.
func (r row) whole(col string, least int) (int, error) {
	s := r.get(col)
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, r.errorf("%s is %q, not a whole number", col, s)
	}
	if n < least {
		return 0, r.errorf("%s is %d, below %d", col, n, least)
	}
	return n, nil
}

// run is the config, concurrency and round the line is about.
func (r row) run() (runKey, int, error) {
	config := r.get("config")
	if config == "" {
		return runKey{}, 0, r.errorf("config is empty")
	}
	conns, err := r.whole("conns", 1)
	if err != nil {
		return runKey{}, 0, err
	}
	round, err := r.whole("round", 0)
	return runKey{config, conns}, round, err
}

// readTSV reads a tab-separated file whose first line names its columns,
// which must include need, and calls each for every data line. Blank lines
// and lines starting with '#' are skipped.
func readTSV(path string, need []string, each func(row) error) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: no such file (bench/perf.sh writes it next to the other)", path)
		}
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var cols map[string]int
	var width int
	for n := 1; sc.Scan(); n++ {
		text := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(text) == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Split(text, "\t")
		if cols == nil {
			cols = map[string]int{}
			for i, name := range fields {
				name = strings.TrimSpace(name)
				if _, dup := cols[name]; dup {
					return fmt.Errorf("%s line %d: column %q twice in the header", path, n, name)
				}
				cols[name] = i
			}
			for _, name := range need {
				if _, ok := cols[name]; !ok {
					return fmt.Errorf("%s line %d: the header has no column %q (it needs %s, separated by tabs)",
						path, n, name, strings.Join(need, ", "))
				}
			}
			width = len(fields)
			continue
		}
		if len(fields) != width {
			return fmt.Errorf("%s line %d: %d fields, the header has %d", path, n, len(fields), width)
		}
		for i := range fields {
			fields[i] = strings.TrimSpace(fields[i])
		}
		if err := each(row{file: path, line: n, cols: cols, fields: fields}); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if cols == nil {
		return fmt.Errorf("%s: empty, not even a header line", path)
	}
	return nil
}

// median of vs (the mean of the middle two for an even count); vs must
// not be empty. It sorts vs.
func median(vs []float64) float64 {
	slices.Sort(vs)
	n := len(vs)
	if n%2 == 1 {
		return vs[n/2]
	}
	return (vs[n/2-1] + vs[n/2]) / 2
}

// concurrencies lists, in increasing order, the concurrencies that have a
// value in m.
func concurrencies[K comparable](m map[K][]float64, conns func(K) int) []int {
	var out []int
	for k := range m {
		if c := conns(k); !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}
