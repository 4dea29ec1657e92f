// Command testsummary reads `go test -json` and prints what a person needs
// from a test run: a result line per package, the whole output of every
// test that failed, and a count of the tests. test.sh runs the tests
// through it:
//
//	go test -json ./... | go run ./internal/testsummary -summary FILE
//
// As with `go test ./...`, a passing test prints nothing. A failing test
// prints everything it printed, and so do its failing subtests; a failing
// package also prints what its test binary printed outside any test (a
// panic, a timeout, an error in TestMain). Build errors are printed as
// they come. With -v, everything is printed as it comes, as go test -v
// does.
//
// The count covers top-level tests (test functions, fuzz targets' seed
// runs, examples), not subtests. It is written to FILE, or printed last
// without -summary: a line with the count, and a second one naming the
// skipped tests, if any, and packages that failed outside any test.
// test.sh puts them on its own last line. testsummary exits 1 if a test
// or a package failed.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

func main() {
	summaryFile := flag.String("summary", "", "write the count line to this file instead of printing it")
	verbose := flag.Bool("v", false, "print everything the tests print, as go test -v does")
	flag.Parse()
	summary, ok := run(os.Stdin, os.Stdout, *verbose)
	if *summaryFile == "" {
		fmt.Println(summary)
	} else if err := os.WriteFile(*summaryFile, []byte(summary+"\n"), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

// event is one line of `go test -json` (see `go doc test2json`).
type event struct {
	Action      string
	Package     string
	Test        string
	Output      string
	ImportPath  string // build-output and build-fail
	FailedBuild string
}

// pkg is what a package's tests printed so far, and how its tests ended.
type pkg struct {
	lines  []outputLine
	result map[string]string // test → pass, fail or skip
	ran    []string          // top-level tests, as they started
}

type outputLine struct{ test, text string }

type counter struct {
	out                     io.Writer
	verbose                 bool
	pkgs                    map[string]*pkg
	passed, skipped, failed []string // top-level tests
	failedPkgs              []string // packages that failed with no failing test
	buildFailed             bool
}

// run copies the test run's output worth reading from in to out, and
// returns the count line and whether everything passed.
func run(in io.Reader, out io.Writer, verbose bool) (summary string, ok bool) {
	c := &counter{out: out, verbose: verbose, pkgs: map[string]*pkg{}}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Action == "" {
			fmt.Fprintln(out, sc.Text()) // not an event: the go command's own words
			continue
		}
		c.event(e)
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(out, "testsummary: reading go test -json:", err)
		c.failedPkgs = append(c.failedPkgs, "(unreadable output)")
	}
	// Packages that never finished: go test was interrupted.
	names := make([]string, 0, len(c.pkgs))
	for name := range c.pkgs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		c.finish(name, "fail")
	}
	return c.summary()
}

func (c *counter) event(e event) {
	switch e.Action {
	case "build-output":
		fmt.Fprint(c.out, e.Output)
		return
	case "build-fail":
		c.buildFailed = true
		return
	}
	p := c.pkgs[e.Package]
	if p == nil {
		p = &pkg{result: map[string]string{}}
		c.pkgs[e.Package] = p
	}
	switch e.Action {
	case "run":
		if !strings.Contains(e.Test, "/") {
			p.ran = append(p.ran, e.Test)
		}
	case "output":
		if c.verbose {
			fmt.Fprint(c.out, e.Output)
			return
		}
		p.lines = append(p.lines, outputLine{e.Test, e.Output})
	case "pass", "fail", "skip":
		if e.Test == "" {
			c.finish(e.Package, e.Action)
			return
		}
		p.result[e.Test] = e.Action
		if strings.Contains(e.Test, "/") {
			return
		}
		name := path.Base(e.Package) + "." + e.Test
		switch e.Action {
		case "pass":
			c.passed = append(c.passed, name)
		case "skip":
			c.skipped = append(c.skipped, name)
		case "fail":
			c.failed = append(c.failed, name)
		}
	}
}

// finish prints a package's result: its "ok" line if it passed; if it
// failed, the output of its failing tests and of tests that never ended
// (a crash), and what it printed outside tests.
func (c *counter) finish(name, action string) {
	p := c.pkgs[name]
	delete(c.pkgs, name)
	if action != "fail" {
		for _, l := range p.lines {
			if l.test == "" && (strings.HasPrefix(l.text, "ok ") || strings.HasPrefix(l.text, "? ")) {
				fmt.Fprint(c.out, l.text)
			}
		}
		return
	}
	anyTestFailed := false
	for _, test := range p.ran {
		if _, ended := p.result[test]; !ended { // the binary died in it
			c.failed = append(c.failed, path.Base(name)+"."+test)
		}
	}
	for _, l := range p.lines {
		if l.test != "" {
			if r, ended := p.result[l.test]; ended && r != "fail" {
				continue
			}
			anyTestFailed = true
			if isFraming(l.text) {
				continue
			}
		}
		fmt.Fprint(c.out, l.text)
	}
	if !anyTestFailed {
		c.failedPkgs = append(c.failedPkgs, name)
	}
}

// isFraming tells whether a line is one of the -v markers that say which
// test runs next (the "--- FAIL" lines are kept).
func isFraming(s string) bool {
	for _, m := range []string{"=== RUN", "=== PAUSE", "=== CONT", "=== NAME"} {
		if strings.HasPrefix(s, m) {
			return true
		}
	}
	return false
}

// summary is the count line, and whether everything passed. Skipped
// tests, and packages that failed outside any test, are named on a second
// line.
func (c *counter) summary() (string, bool) {
	total := len(c.passed) + len(c.skipped) + len(c.failed)
	var s string
	switch {
	case len(c.failed) > 0:
		s = fmt.Sprintf("%d of %s failed: %s", len(c.failed), tests(total), names(c.failed, 10))
	case total == 0:
		s = "no tests ran"
	case len(c.skipped) > 0:
		s = fmt.Sprintf("%d of %s passed", len(c.passed), tests(total))
	case total == 1:
		s = "the one test passed"
	default:
		s = fmt.Sprintf("all %d tests passed", total)
	}
	var notes []string
	if len(c.skipped) > 0 {
		notes = append(notes, fmt.Sprintf("%d skipped: %s", len(c.skipped), names(c.skipped, 5)))
	}
	if len(c.failedPkgs) > 0 {
		notes = append(notes, "failed outside any test: "+names(c.failedPkgs, 5))
	} else if c.buildFailed && len(c.failed) == 0 {
		notes = append(notes, "a build failed")
	}
	if len(notes) > 0 {
		s += "\n" + strings.Join(notes, "; ")
	}
	return s, len(c.failed) == 0 && len(c.failedPkgs) == 0 && !c.buildFailed
}

func tests(n int) string {
	if n == 1 {
		return "1 test"
	}
	return fmt.Sprintf("%d tests", n)
}

// names lists up to max of list, saying how many more there are.
func names(list []string, max int) string {
	if len(list) <= max {
		return strings.Join(list, ", ")
	}
	return strings.Join(list[:max], ", ") + fmt.Sprintf(" and %d more", len(list)-max)
}
