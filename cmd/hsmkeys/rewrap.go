package main

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/hsmkeys/hsmkeys/provider"
)

var keyRewrapSpec = spec{
	path:  "key rewrap",
	usage: "key rewrap --kek NAME [--kek NAME...] [--context k=v...] [--der|--pem] [-j N] FILE...",
	about: `Replaces the recipients of exported keys with wrappings under the newest
version of each KEK named: after 'kek create' made a new version, or to move
keys to another KEK. The key is unwrapped inside the token, wrapped again
there, and destroyed; it keeps its identity. Each FILE is replaced
atomically (same mode); a file that fails is left as it was, and the others
go on. Files are done in parallel. Armour follows each file unless --der or
--pem says otherwise.`,
	examples: `hsmkeys kek create --label backup         # version 2
hsmkeys key rewrap --kek backup keys/*.key
hsmkeys key rewrap --kek backup --kek escrow --pem session.pem
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' key rewrap --kek backup -j 4 keys/*.key`,
}

// maxRewrapWorkers bounds the files in flight: each holds one session of
// the provider's pool while on the token.
const maxRewrapWorkers = 8

type rewrapJob struct {
	options provider.Options
	keks    []*provider.KEK
	der     bool // force DER output
}

// fileResult is the outcome of one file of a batch (rewrap, encrypt,
// decrypt).
type fileResult struct {
	File   string `json:"file"`
	Output string `json:"output,omitempty"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	err    error
}

func (c *cli) cmdKeyRewrap(ctx context.Context, args []string) error {
	fs := c.newFlags(keyRewrapSpec)
	var kekNames listFlag
	ectx := contextFlag{}
	var armor armorFlags
	fs.Var(&kekNames, "kek", "wrap for the KEK `NAME` (repeatable)")
	fs.Var(ectx, "context", "the encryption context `k=v` the keys were made with (repeatable)")
	workers := fs.Int("j", maxRewrapWorkers, "rewrap up to `N` files at once")
	armor.add(fs, true)
	c.pinFlags(fs, false)
	files, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(kekNames) == 0:
		return usagef(fs.spec.path, "key rewrap needs --kek NAME")
	case len(files) == 0:
		return usagef(fs.spec.path, "key rewrap needs at least one FILE")
	case *workers < 1:
		return usagef(fs.spec.path, "-j %d: want at least 1", *workers)
	}
	if err := armor.check(fs); err != nil {
		return err
	}
	files, err = uniqueFiles(files)
	if err != nil {
		return err
	}
	n := min(len(files), *workers)
	p, err := c.openProvider(ctx, provider.ExportTrusted, n+1)
	if err != nil {
		return err
	}
	defer p.Close()
	keks, err := resolveKEKs(ctx, p, kekNames)
	if err != nil {
		return err
	}
	job := rewrapJob{options: provider.Options{Context: ectx, Armor: armor.pem}, keks: keks, der: armor.der}
	results := c.eachFile(ctx, files, n, "rewrapped", func(ctx context.Context, file string) (string, error) {
		return "", rewrapFile(ctx, p, job, file)
	})
	return c.reportFiles(ctx, results, "rewrapped", "each left as it was")
}

// uniqueFiles drops repeated names of one file, so that two workers never
// replace the same file.
func uniqueFiles(files []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, f := range files {
		abs, err := filepath.Abs(f)
		if err != nil {
			return nil, err
		}
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			abs = real
		}
		if !seen[abs] {
			seen[abs] = true
			out = append(out, f)
		}
	}
	return out, nil
}

// eachFile runs fn on every file with n workers (each holds a session of
// the pool while on the token), showing progress on a terminal. fn returns
// the file it wrote, if any.
func (c *cli) eachFile(ctx context.Context, files []string, n int, verb string, fn func(ctx context.Context, file string) (string, error)) []fileResult {
	results := make([]fileResult, len(files))
	prog := c.newProgress()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		done int
	)
	next := make(chan int)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				out, err := fn(ctx, files[i])
				results[i] = fileResult{File: files[i], Output: out, OK: err == nil, err: err}
				if err != nil {
					results[i].Error = err.Error()
				}
				mu.Lock()
				done++
				prog.files(verb, done, len(files))
				mu.Unlock()
			}
		}()
	}
feed:
	for i := range files {
		select {
		case next <- i:
		case <-ctx.Done():
			for j := i; j < len(files); j++ {
				results[j] = fileResult{File: files[j], err: ctx.Err(), Error: "not started: interrupted"}
			}
			break feed
		}
	}
	close(next)
	wg.Wait()
	prog.clear()
	return results
}

// rewrapFile replaces one exported key by its rewrapped self, atomically,
// keeping the file's permissions, and only if the file is still what was
// read (see replaceUnchanged).
func rewrapFile(ctx context.Context, p *provider.Provider, job rewrapJob, path string) error {
	if _, err := checkTarget(path); err != nil {
		return err
	}
	blob, st, err := readKeyFile(path)
	if err != nil {
		return err
	}
	out, err := p.Rewrap(ctx, blob, job.keks, job.options)
	if err != nil {
		return err
	}
	if job.der {
		if b, _ := pem.Decode(out); b != nil {
			out = b.Bytes
		}
	}
	return replaceUnchanged(path, st, blob, out)
}

// readKeyFile reads an exported key file, not through a link, and says
// what file it was.
func readKeyFile(path string) ([]byte, fs.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s is not a regular file", path)
	}
	if st.Size() > provider.MaxBlobSize {
		return nil, nil, fmt.Errorf("%d bytes is larger than an exported key can be", st.Size())
	}
	blob, err := io.ReadAll(io.LimitReader(f, provider.MaxBlobSize+1))
	if err != nil {
		return nil, nil, err
	}
	if len(blob) > provider.MaxBlobSize {
		return nil, nil, fmt.Errorf("%s grew past %d bytes while it was read", path, provider.MaxBlobSize)
	}
	return blob, st, nil
}

// errChanged: a file changed between being read and being replaced.
var errChanged = errors.New("changed since it was read, so it was not replaced")

// replaceUnchanged replaces path by a file of content out, mode of st,
// unless path is no longer the file st describes with content read: the
// same file (device and inode), size and modification time, and the same
// bytes, checked once the new file is on disk, right before the rename.
// What another process wrote there meanwhile (a newer key) is kept, and the
// rewrap is refused. The window left is the rename itself.
func replaceUnchanged(path string, st fs.FileInfo, read, out []byte) error {
	o, err := createFile(path, st.Mode().Perm())
	if err != nil {
		return err
	}
	defer o.abort()
	if _, err := o.Write(out); err != nil {
		return err
	}
	o.check = func() error {
		now, cur, err := readKeyFile(path)
		if err != nil || !os.SameFile(st, cur) || cur.Size() != st.Size() || !cur.ModTime().Equal(st.ModTime()) || !bytes.Equal(now, read) {
			return withHint(fmt.Errorf("%s %w", path, errChanged), "another program wrote it while it was rewrapped; check it and run key rewrap again")
		}
		return nil
	}
	return o.commit()
}

// reportFiles prints per-file failures and sums up a batch.
func (c *cli) reportFiles(ctx context.Context, results []fileResult, verb, onFailure string) error {
	var failed []fileResult
	for _, r := range results {
		if !r.OK {
			failed = append(failed, r)
		}
	}
	if c.json {
		if err := c.writeJSON(results); err != nil {
			return err
		}
	}
	if len(failed) == 0 {
		if !c.json {
			fmt.Fprintf(c.stdout, "%s %d of %d files\n", verb, len(results), len(results))
		}
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for _, r := range failed {
		fmt.Fprintf(c.stderr, "hsmkeys: error: %s: %v\n", r.File, r.err)
	}
	summary := fmt.Errorf("%d of %d files not %s (%s)", len(failed), len(results), verb, onFailure)
	if h := hints(failed[0].err); len(h) > 0 {
		return withHint(summary, "%s", h[0])
	}
	if errors.Is(failed[0].err, provider.ErrNotFound) {
		return withHint(summary, "'hsmkeys key inspect FILE' shows the KEK ids a file needs, 'hsmkeys kek list' those on the token")
	}
	return summary
}
