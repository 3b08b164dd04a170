//! A fault-injecting TCP proxy (pure std: threads and `std::net`), put between two Holdfast
//! nodes or between a node and etcd, because `tc netem` is not available to the tests.
//!
//! ```text
//!   client ──► Proxy (127.0.0.1:random) ──► target
//!               ├─ set_delay(d): every chunk, each way, is delivered d after it was read
//!               ├─ partition_with(Mode::Refuse): live connections cut, new ones accepted then closed
//!               ├─ partition() = Mode::Blackhole: live connections cut, new ones held unanswered
//!               └─ heal(): new connections (and held ones) are forwarded again
//! ```
//!
//! Each forwarded connection has, per direction, a reader thread that stamps every chunk with
//! its delivery time and queues it, and a writer thread that waits for that time and writes it:
//! the delay is added once per chunk without serializing throughput. An end of stream is passed
//! on as a half-close (after the chunks before it); an error cuts the whole connection.
//!
//! Dropping the proxy stops its listener, cuts every connection and waits (bounded) for all its
//! threads to end.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::{self, JoinHandle, sleep};
use std::time::{Duration, Instant};

/// How long the proxy tries to reach its target for one new connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a waiting thread (held connection, delayed chunk) looks at the proxy's state.
const POLL: Duration = Duration::from_millis(50);
/// How long dropping the proxy waits for its threads to end.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
const CHUNK: usize = 64 * 1024;

/// What a partitioned proxy does with a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Accept it and close it at once: the client fails fast (connection closed or reset).
    Refuse,
    /// Accept it and hold it without forwarding a byte, as a network dropping packets does:
    /// the client waits until its own timeout. On `heal()` a held connection is forwarded
    /// (as a retransmission getting through would be).
    Blackhole,
}

/// `127.0.0.1:port`, for [`Proxy::start`] in front of a server known by its port.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A running proxy; see the module documentation.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    delay_us: AtomicU64,
    stop: AtomicBool,
    state: Mutex<State>,
    /// Signalled when `state.partition` changes or the proxy stops.
    changed: Condvar,
    /// Threads of this proxy still running (acceptor excluded).
    threads: AtomicUsize,
}

#[derive(Default)]
struct State {
    partition: Option<Mode>,
    /// The two sockets of every forwarded connection (clones), to cut them all at once.
    conns: HashMap<u64, [TcpStream; 2]>,
    next_id: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(SeqCst))
    }

    /// Sleeps until `at`, in steps of [`POLL`]; `false` if the proxy stopped meanwhile.
    fn sleep_until(&self, at: Instant) -> bool {
        loop {
            if self.stop.load(SeqCst) {
                return false;
            }
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            sleep(left.min(POLL));
        }
    }

    /// Runs `f` on a thread counted in `threads`.
    fn spawn(self: &Arc<Self>, f: impl FnOnce(&Arc<Shared>) + Send + 'static) {
        struct Running(Arc<Shared>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.threads.fetch_sub(1, SeqCst);
            }
        }
        self.threads.fetch_add(1, SeqCst);
        let running = Running(self.clone());
        thread::spawn(move || f(&running.0));
    }
}

fn cut(sockets: &[TcpStream; 2]) {
    for s in sockets {
        let _ = s.shutdown(Shutdown::Both);
    }
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target`. The target need not
    /// be up yet: a connection made while it is down is closed.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy's port");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target,
            delay_us: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            threads: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let acceptor = thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(SeqCst) {
                    break; // woken by Drop's own connection
                }
                match client {
                    Ok(client) => s.spawn(move |s| handle(client, s)),
                    Err(_) => sleep(Duration::from_millis(10)), // e.g. out of descriptors
                }
            }
        });
        Proxy { addr, shared, acceptor: Some(acceptor) }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One-way delay added to every chunk in each direction (a round trip gains twice this), for
    /// the chunks read from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.delay_us.store(u64::try_from(delay.as_micros()).expect("delay fits u64 µs"), SeqCst);
    }

    /// [`Proxy::partition_with`] [`Mode::Blackhole`]: clients of new connections time out.
    pub fn partition(&self) {
        self.partition_with(Mode::Blackhole);
    }

    /// Cuts every forwarded connection (both sockets shut down, queued bytes lost) and treats new
    /// ones as `mode` says, until [`Proxy::heal`].
    pub fn partition_with(&self, mode: Mode) {
        let mut st = self.shared.lock();
        st.partition = Some(mode);
        for (_, sockets) in st.conns.drain() {
            cut(&sockets);
        }
        self.shared.changed.notify_all();
    }

    /// Forwards again: new connections, and those a blackhole holds.
    pub fn heal(&self) {
        self.shared.lock().partition = None;
        self.shared.changed.notify_all();
    }

    /// How many connections are being forwarded now.
    pub fn connections(&self) -> usize {
        self.shared.lock().conns.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        // Unblock `accept` with a connection of our own; if even that fails, leave the thread.
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok()
            && let Some(acceptor) = self.acceptor.take()
        {
            let _ = acceptor.join();
        }
        for (_, sockets) in self.shared.lock().conns.drain() {
            cut(&sockets);
        }
        self.shared.changed.notify_all();
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while self.shared.threads.load(SeqCst) > 0 && Instant::now() < deadline {
            sleep(Duration::from_millis(5));
        }
    }
}

/// One accepted connection: held or refused while partitioned, then forwarded.
fn handle(client: TcpStream, shared: &Arc<Shared>) {
    {
        let mut st = shared.lock();
        loop {
            if shared.stop.load(SeqCst) {
                return;
            }
            match st.partition {
                None => break,
                Some(Mode::Refuse) => return, // dropping `client` closes it
                Some(Mode::Blackhole) => {
                    st = shared.changed.wait_timeout(st, POLL).unwrap_or_else(PoisonError::into_inner).0;
                }
            }
        }
    }
    let Ok(upstream) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
        return; // target down: the client sees its connection closed
    };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let sockets = || -> std::io::Result<[TcpStream; 2]> { Ok([client.try_clone()?, upstream.try_clone()?]) };
    let (Ok(registered), Ok(own)) = (sockets(), sockets()) else { return };
    let id = {
        // Registered under the lock a partition or Drop cuts under, unless either came first.
        let mut st = shared.lock();
        if shared.stop.load(SeqCst) || st.partition.is_some() {
            return;
        }
        st.next_id += 1;
        let id = st.next_id;
        st.conns.insert(id, registered);
        id
    };
    let conn = Arc::new(Conn { shared: shared.clone(), id, sockets: own });
    pump(client.try_clone(), upstream.try_clone(), &conn);
    pump(Ok(upstream), Ok(client), &conn);
}

/// A forwarded connection, alive while any of its four threads is; unregistered when they end.
struct Conn {
    shared: Arc<Shared>,
    id: u64,
    sockets: [TcpStream; 2],
}

impl Conn {
    fn cut(&self) {
        cut(&self.sockets);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.lock().conns.remove(&self.id);
    }
}

/// Forwards `from` → `to`: a reader thread queues (deliver at, bytes), a writer thread delivers.
fn pump(from: std::io::Result<TcpStream>, to: std::io::Result<TcpStream>, conn: &Arc<Conn>) {
    let (Ok(mut from), Ok(mut to)) = (from, to) else {
        conn.cut();
        return;
    };
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_conn = conn.clone();
    conn.shared.spawn(move |shared| {
        let mut buf = vec![0; CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break, // end of stream: the writer half-closes after the queue
                Ok(n) => {
                    if tx.send((Instant::now() + shared.delay(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    reader_conn.cut();
                    break;
                }
            }
        }
    });
    let writer_conn = conn.clone();
    conn.shared.spawn(move |shared| {
        for (at, bytes) in rx {
            if !shared.sleep_until(at) || to.write_all(&bytes).is_err() {
                writer_conn.cut();
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
