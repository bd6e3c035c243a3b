package pkcs11

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"github.com/miekg/pkcs11"
)

// The module host: the child process that loads a PKCS#11 library for the
// gateway (isolation: process). It is this same binary, started as
// "<binary> pkcs11-host" with KEYGRID_PKCS11_HOST=1 and the socket as
// descriptor 3. It takes the library path in its first request, loads and
// initialises it, then runs every request on its own goroutine (the
// library is thread-safe; the gateway never uses one session from two
// calls at once) and writes each reply when it is done. When the gateway
// closes the socket (or dies) the host finalizes the library and exits.
const (
	hostCommand = "pkcs11-host"
	hostEnv     = "KEYGRID_PKCS11_HOST"
)

// init runs the host in any binary that links this package (the gateway,
// and every test binary, so tests need no separate build) when started as
// one; it never returns then.
func init() {
	if os.Getenv(hostEnv) == "1" && len(os.Args) == 2 && os.Args[1] == hostCommand {
		os.Exit(runHost())
	}
}

func runHost() int {
	os.Unsetenv(hostEnv)
	f := os.NewFile(3, "pkcs11-host")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pkcs11 host: no socket on descriptor 3:", err)
		return 2
	}
	conn := fc.(*net.UnixConn)
	br := bufio.NewReaderSize(conn, 64<<10)
	var wmu sync.Mutex
	reply := func(id uint32, err error, w *wbuf) {
		if w == nil || err != nil {
			w = &wbuf{b: make([]byte, 9, 32)}
		}
		if code, ok := ckrCode(err); ok {
			w.b[8] = statusCKR
			w.uint(code)
		} else if err != nil {
			w.b[8] = statusError
			w.b = append(w.b, err.Error()...)
		}
		binary.LittleEndian.PutUint32(w.b[0:4], uint32(len(w.b)-4))
		binary.LittleEndian.PutUint32(w.b[4:8], id)
		wmu.Lock()
		conn.Write(w.b)
		wmu.Unlock()
	}
	var lib *local
	var wg sync.WaitGroup
	var hdr [9]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			break
		}
		n := binary.LittleEndian.Uint32(hdr[0:4])
		if n < 5 || n > maxFrame {
			fmt.Fprintln(os.Stderr, "pkcs11 host: malformed frame; exiting")
			break
		}
		body := make([]byte, n-5)
		if _, err := io.ReadFull(br, body); err != nil {
			break
		}
		id, op := binary.LittleEndian.Uint32(hdr[4:8]), hdr[8]
		if lib == nil {
			l, err := openLocal(op, body)
			reply(id, err, nil)
			if err != nil {
				return 1
			}
			lib = l
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &wbuf{b: make([]byte, 9, 128)}
			err := serveCall(*lib, op, &rbuf{b: body}, w)
			clear(body) // may hold a PIN, plaintext or key material
			reply(id, err, w)
		}()
	}
	wg.Wait()
	if lib != nil {
		lib.Finalize()
		lib.Destroy()
	}
	return 0
}

// openLocal serves the first request, which must be hopOpen: load the
// library at the path it names and C_Initialize it.
func openLocal(op byte, body []byte) (*local, error) {
	r := rbuf{b: body}
	path := r.str()
	if op != hopOpen || r.done() != nil {
		return nil, errBadFrame
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("cannot load %s as a PKCS#11 library", path)
	}
	if err := ctx.Initialize(); err != nil {
		if code, ok := ckrCode(err); !ok || code != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			ctx.Destroy()
			return nil, fmt.Errorf("C_Initialize: %v", err)
		}
	}
	return &local{Ctx: ctx}, nil
}
