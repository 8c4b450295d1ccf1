package main

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite docs/hsmkeys.1 and README's command table from the command definitions")

// readmeTable is README's command table: one row per command, in the
// order of the help, its usage from the command's definition; the second
// column is README's own words (kept from desc), or the command's summary
// for a command README does not describe yet.
func readmeTable(desc map[string]string) string {
	var b strings.Builder
	b.WriteString("| command | what it does |\n| --- | --- |\n")
	for _, cd := range allCommands() {
		d, ok := desc[cd.path]
		if !ok {
			d = strings.ReplaceAll(cd.summary, "|", `\|`)
		}
		b.WriteString("| `" + strings.ReplaceAll(cd.spec.usage, "|", `\|`) + "` | " + d + " |\n")
	}
	return b.String()
}

var tableRow = regexp.MustCompile("^\\| `(.+?)` \\| (.*) \\|$")

// readmeDescriptions reads the second column of README's table, by command.
func readmeDescriptions(table string) map[string]string {
	paths := map[string]bool{}
	for _, cd := range allCommands() {
		paths[cd.path] = true
	}
	out := map[string]string{}
	for _, l := range strings.Split(table, "\n") {
		m := tableRow.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		f := strings.Fields(m[1])
		for n := min(2, len(f)); n > 0; n-- {
			if p := strings.Join(f[:n], " "); paths[p] {
				out[p] = m[2]
				break
			}
		}
	}
	return out
}

const (
	tableStart = "<!-- commands: generated from the command definitions by `go test ./cmd/hsmkeys -run TestDocsCurrent -update` -->\n"
	tableEnd   = "<!-- end of commands -->\n"
)

// The man page in docs/ and README's command table are what the command
// definitions say, so that neither goes stale.
func TestDocsCurrent(t *testing.T) {
	man := filepath.Join("..", "..", "docs", "hsmkeys.1")
	readme := filepath.Join("..", "..", "README.md")
	if *update {
		require.NoError(t, os.WriteFile(man, []byte(manPage()), 0o644))
	}
	got, err := os.ReadFile(man)
	require.NoError(t, err)
	assert.Equal(t, manPage(), string(got), "docs/hsmkeys.1 is not current: go run ./cmd/hsmkeys man > docs/hsmkeys.1")

	b, err := os.ReadFile(readme)
	require.NoError(t, err)
	s := string(b)
	i, j := strings.Index(s, tableStart), strings.Index(s, tableEnd)
	require.True(t, i >= 0 && j > i, "README.md has no generated command table (markers %q ... %q)", tableStart, tableEnd)
	table := s[i+len(tableStart) : j]
	want := readmeTable(readmeDescriptions(table))
	if *update {
		s = s[:i+len(tableStart)] + want + s[j:]
		require.NoError(t, os.WriteFile(readme, []byte(s), 0o644))
		table = want
	}
	assert.Equal(t, want, table, "README's command table does not match the commands (each command once, in the help's order, with its usage): go test ./cmd/hsmkeys -run TestDocsCurrent -update")
}

// Every command is in the help, the man page and each completion script.
func TestDefinitionsDriveEverything(t *testing.T) {
	help, man := topHelp(), manPage()
	scripts := map[string]string{"bash": bashCompletion(), "zsh": zshCompletion(), "fish": fishCompletion()}
	for _, cd := range allCommands() {
		assert.Contains(t, help, "  "+cd.path+" ", "help lists %s", cd.path)
		assert.Contains(t, man, `.SS "`+roff(cd.path)+`"`, "the man page has %s", cd.path)
		for shell, s := range scripts {
			assert.Contains(t, s, cd.path, "%s completion knows %s", shell, cd.path)
		}
		for _, f := range cd.flags {
			if f.global {
				continue
			}
			assert.Contains(t, man, `\fB`+roff(dashed(f.name))+`\fR`, "the man page has %s %s", cd.path, dashed(f.name))
			for shell, s := range scripts {
				assert.Contains(t, s, f.name, "%s completion knows %s %s", shell, cd.path, dashed(f.name))
			}
		}
	}
}
