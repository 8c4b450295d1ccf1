package provider

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLoginHeld: a login another part of the process holds is a runtime
// state with its own sentinel, not a configuration error, in both
// directions.
func TestLoginHeld(t *testing.T) {
	needToken(t)
	p := openProvider(t)
	a := openAdmin(t)
	_, err := a.CreateKEK(bg, uniqueName(t, "held"), KEKRSA2048)
	require.ErrorIs(t, err, ErrLoginHeld)
	assert.NotErrorIs(t, err, ErrConfig)
	var te *TokenError
	require.ErrorAs(t, err, &te)
	assert.Equal(t, uint(pkcs11.CKR_USER_ANOTHER_ALREADY_LOGGED_IN), te.Code)
	assert.ErrorIs(t, te, ErrLoginHeld, "the code stands for the sentinel")
	_ = p
}

// TestClosedSentinels: after Close, every call answers ErrClosed; a key's
// calls also say that Close destroyed it.
func TestClosedSentinels(t *testing.T) {
	needToken(t)
	p, err := Open(bg, baseConfig())
	require.NoError(t, err)
	k, err := p.Generate(bg, AES128)
	require.NoError(t, err)
	sealed, err := k.Seal(bg, []byte("x"), nil)
	require.NoError(t, err)
	require.NoError(t, p.Close())

	_, err = p.Generate(bg, AES128)
	assert.ErrorIs(t, err, ErrClosed, "Generate")
	_, err = k.Seal(bg, []byte("x"), nil)
	assert.ErrorIs(t, err, ErrClosed, "Seal")
	assert.ErrorIs(t, err, ErrKeyDestroyed, "Seal")
	_, err = k.Open(bg, sealed, nil)
	assert.ErrorIs(t, err, ErrClosed, "Open")
	_, err = p.KEKs(bg)
	assert.ErrorIs(t, err, ErrClosed, "KEKs")
	err = p.Encrypt(bg, &bytes.Buffer{}, strings.NewReader("x"), UnknownSize, nil, Options{})
	assert.Error(t, err) // no KEK: the input check comes first

	// A key destroyed while the provider is open is destroyed, not closed.
	p2 := openProvider(t)
	k2, err := p2.Generate(bg, AES128)
	require.NoError(t, err)
	require.NoError(t, k2.Destroy(bg))
	_, err = k2.Seal(bg, []byte("x"), nil)
	assert.ErrorIs(t, err, ErrKeyDestroyed)
	assert.NotErrorIs(t, err, ErrClosed)
}

// exportedErrors parses the package's non-test files for exported
// sentinel variables (Err...) and exported error types (a type with an
// Error method).
func exportedErrors(t *testing.T) []string {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	var names []string
	types := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || strings.HasPrefix(f, "gen_") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		require.NoError(t, err)
		for _, d := range af.Decls {
			switch d := d.(type) {
			case *ast.GenDecl:
				if d.Tok != token.VAR {
					continue
				}
				for _, s := range d.Specs {
					for _, n := range s.(*ast.ValueSpec).Names {
						if n.IsExported() && strings.HasPrefix(n.Name, "Err") {
							names = append(names, n.Name)
						}
					}
				}
			case *ast.FuncDecl:
				if d.Recv == nil || d.Name.Name != "Error" || len(d.Recv.List) != 1 {
					continue
				}
				typ := d.Recv.List[0].Type
				if st, ok := typ.(*ast.StarExpr); ok {
					typ = st.X
				}
				if id, ok := typ.(*ast.Ident); ok && id.IsExported() {
					types["*"+id.Name] = true
				}
			}
		}
	}
	for ty := range types {
		names = append(names, ty)
	}
	require.Contains(t, names, "ErrNotFound")
	require.Contains(t, names, "*TokenError")
	return names
}

// TestSentinelsListed: every exported sentinel and error type is in the
// package doc's list and in the README's "Errors to branch on", with a
// line that says when it happens.
func TestSentinelsListed(t *testing.T) {
	names := exportedErrors(t)
	doc, err := os.ReadFile("doc.go")
	require.NoError(t, err)
	docList := section(t, string(doc), "// # Errors", "package provider")
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	require.NoError(t, err)
	readmeList := section(t, string(readme), "### Errors to branch on", "\n## ")
	for _, n := range names {
		name := strings.TrimPrefix(n, "*")
		assert.Regexp(t, `(?m)^//   - \*?`+name+`: \S`, docList, "%s is not in the package doc's list of errors (doc.go, # Errors)", n)
		assert.Regexp(t, "(?m)^- `\\*?(provider\\.)?"+name+"`[^\\n]*: \\S", readmeList, "%s is not in the README's Errors to branch on", n)
	}
	// Nothing listed that does not exist.
	known := map[string]bool{}
	for _, n := range names {
		known[strings.TrimPrefix(n, "*")] = true
	}
	for _, m := range regexp.MustCompile(`(?m)^//   - \*?(\w+):`).FindAllStringSubmatch(docList, -1) {
		assert.True(t, known[m[1]], "doc.go lists %s, which the package does not export", m[1])
	}
	for _, m := range regexp.MustCompile("(?m)^- `\\*?(?:provider\\.)?(\\w+)`").FindAllStringSubmatch(readmeList, -1) {
		assert.True(t, known[m[1]], "the README lists %s, which the package does not export", m[1])
	}
}

func section(t *testing.T, s, start, end string) string {
	t.Helper()
	i := strings.Index(s, start)
	require.GreaterOrEqual(t, i, 0, "no %q", start)
	s = s[i+len(start):]
	if j := strings.Index(s, end); j >= 0 {
		s = s[:j]
	}
	return s
}
