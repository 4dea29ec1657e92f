package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// events writes `go test -json` lines: each e is action, package, test,
// output (for "output").
func events(es ...[4]string) string {
	var b strings.Builder
	for _, e := range es {
		line, _ := json.Marshal(map[string]string{"Action": e[0], "Package": e[1], "Test": e[2], "Output": e[3]})
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.String()
}

func out(pkg, test, text string) [4]string   { return [4]string{"output", pkg, test, text} }
func end(action, pkg, test string) [4]string { return [4]string{action, pkg, test, ""} }

// TestPassingRun: a passing run prints each package's result line and
// nothing its tests printed; the count leaves out subtests.
func TestPassingRun(t *testing.T) {
	in := events(
		out("m/a", "TestA", "=== RUN   TestA\n"),
		out("m/a", "TestA", "    a_test.go:5: a log line\n"),
		out("m/a", "TestA/sub", "    a_test.go:6: a subtest's line\n"),
		end("pass", "m/a", "TestA/sub"),
		end("pass", "m/a", "TestA"),
		out("m/a", "TestB", "stray output of a passing test\n"),
		end("pass", "m/a", "TestB"),
		out("m/a", "", "PASS\n"),
		out("m/a", "", "ok  \tm/a\t0.1s\n"),
		end("pass", "m/a", ""),
		out("m/b", "", "?   \tm/b\t[no test files]\n"),
		end("skip", "m/b", ""),
	)
	var got strings.Builder
	summary, ok := run(strings.NewReader(in), &got, false)
	if want := "ok  \tm/a\t0.1s\n?   \tm/b\t[no test files]\n"; got.String() != want {
		t.Errorf("printed %q, want %q", got.String(), want)
	}
	if !ok || summary != "all 2 tests passed" {
		t.Errorf("summary %q, ok %v; want \"all 2 tests passed\", true", summary, ok)
	}
}

// TestFailingRun: a failing test's output is printed in full, with its
// failing subtest's, and nothing of the tests that passed; the count
// names the failure.
func TestFailingRun(t *testing.T) {
	in := events(
		out("m/a", "TestA", "=== RUN   TestA\n"),
		out("m/a", "TestA", "    caddy log line of a passing test\n"),
		end("pass", "m/a", "TestA"),
		out("m/a", "TestB", "=== RUN   TestB\n"),
		out("m/a", "TestB/ok", "=== RUN   TestB/ok\n"),
		out("m/a", "TestB/ok", "    b_test.go:7: passing subtest\n"),
		end("pass", "m/a", "TestB/ok"),
		out("m/a", "TestB/bad", "    b_test.go:8: got 401, want 200\n"),
		out("m/a", "TestB/bad", "--- FAIL: TestB/bad (0.00s)\n"),
		end("fail", "m/a", "TestB/bad"),
		out("m/a", "TestB", "    b_test.go:9: Caddy's log while the test ran:\n"),
		out("m/a", "TestB", "--- FAIL: TestB (0.01s)\n"),
		end("fail", "m/a", "TestB"),
		out("m/a", "TestC", "    c_test.go:3: no server\n"),
		end("skip", "m/a", "TestC"),
		out("m/a", "", "FAIL\n"),
		out("m/a", "", "FAIL\tm/a\t0.2s\n"),
		end("fail", "m/a", ""),
	)
	var got strings.Builder
	summary, ok := run(strings.NewReader(in), &got, false)
	want := "    b_test.go:8: got 401, want 200\n--- FAIL: TestB/bad (0.00s)\n" +
		"    b_test.go:9: Caddy's log while the test ran:\n--- FAIL: TestB (0.01s)\n" +
		"FAIL\nFAIL\tm/a\t0.2s\n"
	if got.String() != want {
		t.Errorf("printed:\n%s\nwant:\n%s", got.String(), want)
	}
	if want := "1 of 3 tests failed: a.TestB\n1 skipped: a.TestC"; ok || summary != want {
		t.Errorf("summary %q, ok %v; want %q, false", summary, ok, want)
	}
}

// TestCrashAndBuildFailure: a test binary that dies in a test shows that
// test's output (it never ended); a build failure shows the compiler's
// words; both fail the run.
func TestCrashAndBuildFailure(t *testing.T) {
	in := `{"ImportPath":"m/b [m/b.test]","Action":"build-output","Output":"b_test.go:5:28: undefined: nothing\n"}
{"ImportPath":"m/b [m/b.test]","Action":"build-fail"}
` + events(
		[4]string{"run", "m/a", "TestHang", ""},
		out("m/a", "TestHang", "=== RUN   TestHang\n"),
		out("m/a", "TestHang", "panic: test timed out after 10m0s\n"),
		out("m/a", "", "FAIL\tm/a\t600s\n"),
		end("fail", "m/a", ""),
		out("m/b", "", "FAIL\tm/b [build failed]\n"),
		end("fail", "m/b", ""),
	)
	var got strings.Builder
	summary, ok := run(strings.NewReader(in), &got, false)
	for _, want := range []string{"undefined: nothing", "panic: test timed out", "FAIL\tm/a", "FAIL\tm/b [build failed]"} {
		if !strings.Contains(got.String(), want) {
			t.Errorf("printed %q, want it to contain %q", got.String(), want)
		}
	}
	if want := "1 of 1 test failed: a.TestHang\nfailed outside any test: m/b"; ok || summary != want {
		t.Errorf("summary %q, ok %v; want %q, false", summary, ok, want)
	}
}

// TestSkips: skipped tests are counted and named, so a skip is seen.
func TestSkips(t *testing.T) {
	in := events(
		end("pass", "m/a", "TestA"),
		end("skip", "m/a", "TestShippedCaddyfile"),
		out("m/a", "", "ok  \tm/a\t0.1s\n"),
		end("pass", "m/a", ""),
	)
	summary, ok := run(strings.NewReader(in), new(strings.Builder), false)
	if want := "1 of 2 tests passed\n1 skipped: a.TestShippedCaddyfile"; !ok || summary != want {
		t.Errorf("summary %q, ok %v; want %q, true", summary, ok, want)
	}
}
