package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// A row is one line of results.tsv: one config measured at one
// concurrency in one round.
type row struct {
	config                    string
	conns, round              int
	rps, p50, p99, cpu, rssKB float64
	non2xx, sockerr           int64
}

// An extra is one line of extras.tsv: a figure only some configs have
// (Redis's CPU, store lookups during a flood, a cold start…). conns and
// round are 0 for a figure measured once per run.
type extra struct {
	config       string
	conns, round int
	metric       string
	value        float64
}

// extraLabels says what each metric of extras.tsv is, in the order they
// are printed.
var extraLabels = []struct{ metric, label string }{
	{"redis_evals_per_req", "Redis round trips (EVALSHA/EVAL) per request"},
	{"redis_cmds_per_req", "Redis commands per request, the script's own included"},
	{"redis_cpu_us_per_req", "Redis CPU µs per request"},
	{"redis_fallback", "limiter fallen back to local shares at the round's end (must be 0)"},
	{"store_lookups_per_s", "store lookups per second"},
	{"flood_rps", "flood requests per second (made-up keys)"},
	{"flood_admitted", "flood requests admitted (must be 0)"},
	{"start_ms", "start → first admitted request, ms"},
	{"badsum_requests", "bad-checksum flood: requests sent"},
	{"badsum_lookups", "bad-checksum flood: store lookups (target 0)"},
	{"seed_s", "seeding the store, s"},
}

// summary prints the medians over rounds and the ratios to bare Caddy
// measured in the same round, per concurrency.
func summary(args []string) error {
	fs := flag.NewFlagSet("summary", flag.ExitOnError)
	in := fs.String("in", "", "directory holding results.tsv (and extras.tsv)")
	_ = fs.Parse(args)
	rows, err := readTSV(filepath.Join(*in, "results.tsv"), 10, parseRow)
	if err != nil {
		return err
	}
	extras, err := readTSV(filepath.Join(*in, "extras.tsv"), 5, parseExtra)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	configs, conns := configsAndConns(rows)
	bare := map[[2]int]row{} // conns, round → bare's row
	local := map[[2]int]row{}
	for _, r := range rows {
		switch r.config {
		case "bare":
			bare[[2]int{r.conns, r.round}] = r
		case "local":
			local[[2]int{r.conns, r.round}] = r
		}
	}

	printOnce(extras)
	for _, c := range conns {
		fmt.Printf("\nwrk -c%d: medians over rounds; ÷ bare: the median of the per-round ratios [lowest–highest]\n", c)
		fmt.Printf("%-9s %8s %7s %7s %7s %7s   %-19s %-19s %-19s\n",
			"config", "req/s", "p50 ms", "p99 ms", "CPU µs", "RSS MB", "req/s ÷ bare", "p99 ÷ bare", "CPU/req ÷ bare")
		for _, name := range configs {
			var mine []row
			for _, r := range rows {
				if r.config == name && r.conns == c {
					mine = append(mine, r)
				}
			}
			if len(mine) == 0 {
				continue
			}
			printConfig(name, mine, bare)
		}
		printFloodVsQuiet(rows, local, c)
		printExtras(extras, c)
	}
	return nil
}

func printConfig(name string, mine []row, bare map[[2]int]row) {
	get := func(f func(row) float64) float64 { return median(mapRows(mine, f)) }
	line := fmt.Sprintf("%-9s %8.0f %7.2f %7.2f %7.1f %7.1f", name, get(func(r row) float64 { return r.rps }),
		get(func(r row) float64 { return r.p50 })/1000, get(func(r row) float64 { return r.p99 })/1000,
		get(func(r row) float64 { return r.cpu }), get(func(r row) float64 { return r.rssKB })/1024)
	if name != "bare" {
		for _, f := range []func(row) float64{
			func(r row) float64 { return r.rps }, func(r row) float64 { return r.p99 }, func(r row) float64 { return r.cpu },
		} {
			line += "   " + fmt.Sprintf("%-16s", ratioText(mine, bare, f))
		}
	}
	var bad int64
	for _, r := range mine {
		bad += r.non2xx + r.sockerr
	}
	if bad > 0 {
		line += fmt.Sprintf("   (%d answers not 2xx/3xx or socket errors: not valid)", bad)
	}
	fmt.Println(line)
}

// printFloodVsQuiet compares the cached key's p99 under the flood with the
// local config's (the same key, quiet) in the same round.
func printFloodVsQuiet(rows []row, local map[[2]int]row, c int) {
	var ratios []float64
	for _, r := range rows {
		if l, ok := local[[2]int{c, r.round}]; ok && r.config == "flood" && r.conns == c && l.p99 > 0 {
			ratios = append(ratios, r.p99/l.p99)
		}
	}
	if len(ratios) > 0 {
		fmt.Printf("flood: the cached key's p99 ÷ its quiet p99 (local, same round): %s (target ≤ 2)\n", rangeText(ratios))
	}
}

func ratioText(mine []row, bare map[[2]int]row, f func(row) float64) string {
	var ratios []float64
	for _, r := range mine {
		if b, ok := bare[[2]int{r.conns, r.round}]; ok && f(b) > 0 {
			ratios = append(ratios, f(r)/f(b))
		}
	}
	if len(ratios) == 0 {
		return "-"
	}
	return rangeText(ratios)
}

func rangeText(v []float64) string {
	return fmt.Sprintf("%.3f [%.3f–%.3f]", median(v), slices.Min(v), slices.Max(v))
}

func printOnce(extras []extra) {
	printed := false
	for _, l := range extraLabels {
		for _, e := range extras {
			if e.conns == 0 && e.metric == l.metric {
				if !printed {
					fmt.Println("\nOnce per run:")
					printed = true
				}
				fmt.Printf("  %-9s %-48s %10.1f\n", e.config, l.label, e.value)
			}
		}
	}
}

func printExtras(extras []extra, c int) {
	for _, l := range extraLabels {
		byConfig := map[string][]float64{}
		var order []string
		for _, e := range extras {
			if e.conns == c && e.metric == l.metric {
				if _, ok := byConfig[e.config]; !ok {
					order = append(order, e.config)
				}
				byConfig[e.config] = append(byConfig[e.config], e.value)
			}
		}
		for _, name := range order {
			fmt.Printf("%s: %s: %s\n", name, l.label, rangeText(byConfig[name]))
		}
	}
}

// configsAndConns lists the configs (bare first, then in order of first
// appearance) and the concurrencies (ascending) of the rows.
func configsAndConns(rows []row) ([]string, []int) {
	configs := []string{"bare"}
	var conns []int
	for _, r := range rows {
		if !slices.Contains(configs, r.config) {
			configs = append(configs, r.config)
		}
		if !slices.Contains(conns, r.conns) {
			conns = append(conns, r.conns)
		}
	}
	slices.Sort(conns)
	return configs, conns
}

func mapRows(rows []row, f func(row) float64) []float64 {
	out := make([]float64, len(rows))
	for i, r := range rows {
		out[i] = f(r)
	}
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

// readTSV parses a tab-separated file with a header line, whose lines
// have n fields each.
func readTSV[T any](path string, n int, parse func([]string) (T, error)) ([]T, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []T
	sc := bufio.NewScanner(f)
	for line := 0; sc.Scan(); line++ {
		fields := strings.Split(sc.Text(), "\t")
		if line == 0 || sc.Text() == "" {
			continue
		}
		if len(fields) != n {
			return nil, fmt.Errorf("%s:%d: %d fields, want %d", path, line+1, len(fields), n)
		}
		v, err := parse(fields)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line+1, err)
		}
		out = append(out, v)
	}
	return out, sc.Err()
}

// numbers parses the fields as numbers.
func numbers(fields []string) ([]float64, error) {
	out := make([]float64, len(fields))
	for i, f := range fields {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func parseRow(f []string) (row, error) {
	v, err := numbers(f[1:])
	if err != nil {
		return row{}, err
	}
	return row{config: f[0], conns: int(v[0]), round: int(v[1]), rps: v[2], p50: v[3], p99: v[4],
		cpu: v[5], rssKB: v[6], non2xx: int64(v[7]), sockerr: int64(v[8])}, nil
}

func parseExtra(f []string) (extra, error) {
	v, err := numbers([]string{f[1], f[2], f[4]})
	if err != nil {
		return extra{}, err
	}
	return extra{config: f[0], conns: int(v[0]), round: int(v[1]), metric: f[3], value: v[2]}, nil
}
