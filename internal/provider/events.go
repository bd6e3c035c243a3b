package provider

import "time"

// Event is something a provider reports for the audit log: a reset of its
// connection to the HSM (C_Finalize, C_Initialize, login), a failed one, a
// re-login. It never carries a PIN or key bytes.
type Event struct {
	// Kind names the event: "reset", "reset_failed", "login", …; the audit
	// record's operation is "provider_" + Kind.
	Kind string
	Time time.Time
	// Duration is how long the event took (a reset: from start to done).
	Duration time.Duration
	// Err, when set, makes the record's outcome "failure" with its code
	// (kgerr); its text is not recorded.
	Err error
	// Detail is a short description for people (clipped to 200 bytes):
	// no PIN, no key bytes, nothing from a request.
	Detail string
}

// EventReporter is implemented by providers that report events. The
// server calls SetEventSink once, before serving; the provider calls sink
// for each event, from any goroutine (the sink writes the audit log
// synchronously, so call it outside locks that requests wait on).
type EventReporter interface {
	SetEventSink(sink func(Event))
}
