package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReplaceUnchanged: key rewrap's replacement happens only if the file
// is still what was read; a file rewritten in place or replaced by another
// one meanwhile is kept, with a clear error. No token needed: this is the
// step after the token's work.
func TestReplaceUnchanged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k.der")
	read := []byte("the key as read")
	for name, change := range map[string]func(){
		"unchanged": func() {},
		"rewritten in place, same size": func() {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteAt([]byte("THE"), 0)
			require.NoError(t, err)
			require.NoError(t, f.Close())
		},
		"replaced by another file": func() {
			require.NoError(t, os.WriteFile(path+".new", []byte("a newer key"), 0o600))
			require.NoError(t, os.Rename(path+".new", path))
		},
		"removed": func() { require.NoError(t, os.Remove(path)) },
	} {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, os.WriteFile(path, read, 0o600))
			blob, st, err := readKeyFile(path)
			require.NoError(t, err)
			require.Equal(t, read, blob)
			change()
			before, _ := os.ReadFile(path)
			err = replaceUnchanged(path, st, blob, []byte("rewrapped"))
			after, _ := os.ReadFile(path)
			if name == "unchanged" {
				require.NoError(t, err)
				assert.Equal(t, "rewrapped", string(after))
				return
			}
			require.ErrorIs(t, err, errChanged)
			assert.Contains(t, err.Error(), path)
			assert.Equal(t, before, after, "what was written meanwhile is kept")
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			for _, e := range entries {
				assert.NotContains(t, e.Name(), ".hsmkeys-", "no temporary file left")
			}
		})
	}
}

// TestDecryptSpoolUnnamed: decrypt copies a pipe to a file with no name:
// while the copy is going on $TMPDIR shows nothing, and after a SIGKILL
// nothing is left. The input is a FIFO the test writes to and keeps open;
// a blocking write of more than the pipe holds returns only once hsmkeys
// has read most of it, so the copy is known to be under way. No token is
// needed: the input is read before the token is opened.
func TestDecryptSpoolUnnamed(t *testing.T) {
	dir := t.TempDir()
	tmp := filepath.Join(dir, "tmp")
	require.NoError(t, os.Mkdir(tmp, 0o700))
	fifo := filepath.Join(dir, "in")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	cmd := exec.Command("hsmkeys", "--module", "/nonexistent.so", "decrypt", "-i", fifo, "-o", filepath.Join(dir, "out"))
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "HSMKEYS_PIN=unused")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0) // waits for hsmkeys to open it
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Write(make([]byte, 1<<20)) // more than a pipe holds (64 KiB)
	require.NoError(t, err)
	list := func() []string {
		entries, err := os.ReadDir(tmp)
		require.NoError(t, err)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	assert.Empty(t, list(), "no named file while copying")
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	err = cmd.Wait()
	require.Error(t, err)
	assert.False(t, strings.Contains(stderr.String(), "panic"), stderr.String())
	assert.Empty(t, list(), "nothing left after SIGKILL")
	require.NoDirExists(t, filepath.Join(dir, "out"))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		assert.NotContains(t, e.Name(), "hsmkeys", "nothing left beside the output either")
	}
}
