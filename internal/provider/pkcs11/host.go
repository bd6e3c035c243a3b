package pkcs11

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"github.com/miekg/pkcs11"
)

// The module host: the child process that loads a PKCS#11 library for the
// gateway (isolation: process). It is this same binary, started as
// "<binary> pkcs11-host" with KEYGRID_PKCS11_HOST=1 and the control socket
// as descriptor 3. It takes the library path in the first request on it,
// loads and initialises the library, then receives lanes (socket pairs,
// SCM_RIGHTS) on it and serves each on a goroutine of its own: read a
// request, call the library, write the reply (the library is thread-safe;
// the gateway never uses one session from two calls at once). When the
// gateway closes the control socket (or dies) the host finalizes the
// library and exits.
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

// hostCtl is the control socket's descriptor in the host.
const hostCtl = 3

func runHost() int {
	os.Unsetenv(hostEnv)
	syscall.CloseOnExec(hostCtl)
	if _, err := syscall.GetsockoptInt(hostCtl, syscall.SOL_SOCKET, syscall.SO_TYPE); err != nil {
		fmt.Fprintln(os.Stderr, "pkcs11 host: no socket on descriptor 3:", err)
		return 2
	}
	frame, err := readFrame(rawFD(hostCtl), nil)
	if err != nil {
		return 1
	}
	lib, err := openLocal(frame[4], frame[5:])
	w := &wbuf{b: []byte{0, 0, 0, 0, statusOK}}
	replyTo(w, err)
	if writeAll(rawFD(hostCtl), w.b) != nil || err != nil {
		return 1
	}
	var (
		mu    sync.Mutex
		lanes = map[int]bool{}
		wg    sync.WaitGroup
	)
	one, oob := make([]byte, 1), make([]byte, syscall.CmsgSpace(4))
	for {
		n, oobn, _, _, err := syscall.Recvmsg(hostCtl, one, oob, syscall.MSG_CMSG_CLOEXEC)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n == 0 {
			break // the gateway closed the control socket, or is gone
		}
		fd, err := laneFD(oob[:oobn])
		if err != nil {
			fmt.Fprintln(os.Stderr, "pkcs11 host: malformed lane; exiting")
			break
		}
		mu.Lock()
		lanes[fd] = true
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			rw, closeFD := laneIO(fd)
			serveLane(*lib, rw)
			mu.Lock()
			delete(lanes, fd)
			closeFD()
			mu.Unlock()
		}()
	}
	// Lanes blocked on a read end now; a call inside the library finishes
	// first.
	mu.Lock()
	for fd := range lanes {
		syscall.Shutdown(fd, syscall.SHUT_RD)
	}
	mu.Unlock()
	wg.Wait()
	lib.Finalize()
	lib.Destroy()
	return 0
}

// laneFD is the one descriptor an SCM_RIGHTS message carries.
func laneFD(oob []byte) (int, error) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil || len(msgs) != 1 {
		return -1, errBadFrame
	}
	fds, err := syscall.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			syscall.Close(fd)
		}
		return -1, errBadFrame
	}
	return fds[0], nil
}

// serveLane serves calls on one lane until the gateway closes it. Its
// buffers are reused and cleared after each call (a request may hold a
// PIN, plaintext or key material; a reply plaintext).
func serveLane(lib local, fd io.ReadWriter) {
	var in []byte
	w := &wbuf{b: make([]byte, 0, 4096)}
	for {
		frame, err := readFrame(fd, in)
		if err != nil {
			if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, syscall.ECONNRESET) {
				fmt.Fprintln(os.Stderr, "pkcs11 host: lane:", err)
			}
			return
		}
		w.b = append(w.b[:0], 0, 0, 0, 0, statusOK)
		err = serveCall(lib, frame[4], &rbuf{b: frame[5:]}, w)
		clear(frame)
		replyTo(w, err)
		binary.LittleEndian.PutUint32(w.b[0:4], uint32(len(w.b)-4))
		err = writeAll(fd, w.b)
		clear(w.b)
		if err != nil {
			return
		}
		in = frame[:0]
		if cap(in) > keepBuf {
			in = nil
		}
		if cap(w.b) > keepBuf {
			w.b = make([]byte, 0, 4096)
		}
	}
}

// replyTo makes w, a reply with its results so far, the reply of err: the
// results when nil, else a CKR code or a message in their place.
func replyTo(w *wbuf, err error) {
	if err == nil {
		binary.LittleEndian.PutUint32(w.b[0:4], uint32(len(w.b)-4))
		return
	}
	clear(w.b[5:])
	w.b = w.b[:5]
	if code, ok := ckrCode(err); ok {
		w.b[4] = statusCKR
		w.uint(code)
	} else {
		w.b[4] = statusError
		w.b = append(w.b, err.Error()...)
	}
	binary.LittleEndian.PutUint32(w.b[0:4], uint32(len(w.b)-4))
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
