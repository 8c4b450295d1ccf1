package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite docs/hsmkeys.1 and README's command table from the command definitions")

// readmeTable is README's command table, made from the command definitions.
func readmeTable() string {
	var b strings.Builder
	b.WriteString("| command | what it does |\n| --- | --- |\n")
	for _, cd := range allCommands() {
		b.WriteString("| `" + strings.ReplaceAll(cd.spec.usage, "|", `\|`) + "` | " + strings.ReplaceAll(cd.summary, "|", `\|`) + " |\n")
	}
	return b.String()
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
	if *update {
		s = s[:i+len(tableStart)] + readmeTable() + s[j:]
		require.NoError(t, os.WriteFile(readme, []byte(s), 0o644))
		j = strings.Index(s, tableEnd)
	}
	assert.Equal(t, readmeTable(), s[i+len(tableStart):j], "README's command table is not current: go test ./cmd/hsmkeys -run TestDocsCurrent -update")
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
