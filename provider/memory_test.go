package provider

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// patternReader yields n bytes of a cheap deterministic pattern.
type patternReader struct {
	n, off int64
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n-r.off)]
	for i := range p {
		x := uint64(r.off + int64(i))
		p[i] = byte(x*2654435761>>13) ^ byte(x>>20)
	}
	r.off += int64(len(p))
	return len(p), nil
}

type memResult struct {
	Size      int64  `json:"size"`
	PeakRSSkB int64  `json:"peak_rss_kb"`
	BaseRSSkB int64  `json:"base_rss_kb"`
	InSum     string `json:"in_sum"`
	OutSum    string `json:"out_sum"`
}

// TestStreamMemory encrypts and decrypts a 1 GiB stream in a child process
// (so that its peak resident memory is its own, SoftHSM's included, since
// SoftHSM runs inside the process) and checks the peak stays under 64 MiB.
func TestStreamMemory(t *testing.T) {
	if os.Getenv("HSMKEYS_MEMORY_CHILD") != "" {
		memoryChild(t)
		return
	}
	needToken(t)
	size := int64(1 << 30)
	if testing.Short() {
		size = 64 << 20
	}
	a := openAdmin(t)
	kek := makeKEK(t, a, uniqueName(t, "memory"), KEKAES256)
	require.NoError(t, a.Close())
	cmd := exec.Command(os.Args[0], "-test.run=^TestStreamMemory$", "-test.count=1", "-test.v")
	cmd.Env = childEnv("HSMKEYS_MEMORY_CHILD="+strconv.FormatInt(size, 10), "HSMKEYS_MEMORY_KEK="+kek.Label,
		"HSMKEYS_MEMORY_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	i := bytes.Index(out, []byte("MEMORY "))
	require.GreaterOrEqual(t, i, 0, "%s", out)
	var res memResult
	require.NoError(t, json.NewDecoder(bytes.NewReader(out[i+7:])).Decode(&res))
	t.Logf("%d MiB through Encrypt and Decrypt: peak RSS %d KiB (%d KiB before)", res.Size>>20, res.PeakRSSkB, res.BaseRSSkB)
	assert.Equal(t, size, res.Size)
	assert.Equal(t, res.InSum, res.OutSum, "decrypt gives back what was encrypted")
	assert.Less(t, res.PeakRSSkB, int64(64<<10), "peak resident memory under 64 MiB")
}

func memoryChild(t *testing.T) {
	size, err := strconv.ParseInt(os.Getenv("HSMKEYS_MEMORY_CHILD"), 10, 64)
	require.NoError(t, err)
	dir := os.Getenv("HSMKEYS_MEMORY_DIR")
	p := openProvider(t)
	kek, err := p.KEK(bg, os.Getenv("HSMKEYS_MEMORY_KEK"))
	require.NoError(t, err)
	base := rssKB(t, "VmRSS")

	f, err := os.CreateTemp(dir, "enc-")
	require.NoError(t, err)
	defer os.Remove(f.Name())
	inHash := sha256.New()
	src := io.TeeReader(&patternReader{n: size}, inHash)
	w := bufio.NewWriterSize(f, 1<<20)
	require.NoError(t, p.Encrypt(bg, w, src, -1, []*KEK{kek}, Options{}))
	require.NoError(t, w.Flush())
	st, err := f.Stat()
	require.NoError(t, err)

	outHash := sha256.New()
	require.NoError(t, p.Decrypt(bg, outHash, f, st.Size(), Options{}))
	require.NoError(t, f.Close())
	res := memResult{Size: size, PeakRSSkB: rssKB(t, "VmHWM"), BaseRSSkB: base,
		InSum: fmt.Sprintf("%x", inHash.Sum(nil)), OutSum: fmt.Sprintf("%x", outHash.Sum(nil))}
	b, err := json.Marshal(res)
	require.NoError(t, err)
	fmt.Printf("MEMORY %s\n", b)
}

// rssKB reads a Vm* line of /proc/self/status.
func rssKB(t testing.TB, field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			fs := strings.Fields(line)
			n, err := strconv.ParseInt(fs[1], 10, 64)
			require.NoError(t, err)
			return n
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}
