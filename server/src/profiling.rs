//! Tracy instrumentation of the running server (the `tracy` feature, which also turns on the
//! engine's): a frame mark per tick, zones for the whole tick, the input, publish and flush
//! phases (the engine opens the others, and one per reducer), the network task's work, and the
//! systems (through `layer`, which exists with the feature); plots of tick time, connected
//! clients, rows changed and bytes sent; messages for connects, disconnects and errors.
//! `docs/profiling.md` lists every name.
//!
//! Without the feature every function here is an empty inline one: call sites stay one line
//! and nothing of Tracy is compiled in. With it, nothing is recorded until the binary starts the
//! Tracy client (`tracy_client::Client::start()`; a library never does), and then only while a
//! profiler is connected.

pub use orrery_engine::profiling::{
    ENABLED, ERROR_COLOR, LIFECYCLE_COLOR, Zone, connected, message, phase,
};

/// Names of the plots the server feeds, in the order a capture lists them.
pub const PLOTS: [&str; 4] = [
    "tick_time_ms",
    "clients_connected",
    "rows_changed",
    "bytes_out",
];

/// An open zone of the server's own (not a phase); it ends when dropped.
#[must_use = "a zone ends when it is dropped: bind it to a variable for the scope it measures"]
pub struct ServerZone {
    #[cfg(feature = "tracy")]
    _span: Option<tracy_client::Span>,
}

/// Ends the zone (the span inside, with the feature). Without the feature this empty impl is
/// what lets call sites end a zone early with `drop(zone)` the same way in both builds.
impl Drop for ServerZone {
    #[inline(always)]
    fn drop(&mut self) {}
}

impl std::fmt::Debug for ServerZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerZone")
    }
}

/// The server's zones that are not tick phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// One whole tick on the tick thread (around all its phases).
    Tick,
    /// The network task reading datagrams from the UDP socket into the session.
    NetReceive,
    /// The network task applying one tick's command batch to the session.
    NetCommands,
    /// The network task's timer update of the session (keep-alives, resends, timeouts).
    NetUpdate,
    /// The network task sending queued datagrams.
    NetSend,
}

impl Work {
    /// The zone's name.
    pub const fn name(self) -> &'static str {
        match self {
            Work::Tick => "tick",
            Work::NetReceive => "net_receive",
            Work::NetCommands => "net_commands",
            Work::NetUpdate => "net_update",
            Work::NetSend => "net_send",
        }
    }
}

/// Opens the zone of `work`.
#[inline(always)]
pub fn zone(work: Work) -> ServerZone {
    #[cfg(feature = "tracy")]
    {
        use tracy_client::span_location;
        let Some(client) = tracy_client::Client::running() else {
            return ServerZone { _span: None };
        };
        let location = match work {
            Work::Tick => span_location!("tick"),
            Work::NetReceive => span_location!("net_receive"),
            Work::NetCommands => span_location!("net_commands"),
            Work::NetUpdate => span_location!("net_update"),
            Work::NetSend => span_location!("net_send"),
        };
        ServerZone {
            _span: Some(client.span(location, 0)),
        }
    }
    #[cfg(not(feature = "tracy"))]
    {
        let _ = work;
        ServerZone {}
    }
}

/// Marks the end of a tick: Tracy's frame.
#[inline(always)]
pub fn frame_mark() {
    #[cfg(feature = "tracy")]
    if let Some(client) = tracy_client::Client::running() {
        client.frame_mark();
    }
}

/// The plots the server feeds, one point per tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plot {
    /// The tick's total time, all phases with flush, in milliseconds.
    TickTimeMs,
    /// Clients connected (completed `client_connected`).
    ClientsConnected,
    /// Rows the tick changed (inserts, updates and deletes, net).
    RowsChanged,
    /// UDP bytes sent since the previous tick.
    BytesOut,
}

impl Plot {
    /// Every plot, in [`PLOTS`] order.
    pub const ALL: [Plot; 4] = [
        Plot::TickTimeMs,
        Plot::ClientsConnected,
        Plot::RowsChanged,
        Plot::BytesOut,
    ];

    /// The plot's name.
    pub const fn name(self) -> &'static str {
        PLOTS[self as usize]
    }
}

/// Adds a point to `plot`, if a profiler is connected.
#[inline(always)]
pub fn plot(plot: Plot, value: f64) {
    #[cfg(feature = "tracy")]
    if tracy_client::Client::is_connected()
        && let Some(client) = tracy_client::Client::running()
    {
        use tracy_client::plot_name;
        let name = match plot {
            Plot::TickTimeMs => plot_name!("tick_time_ms"),
            Plot::ClientsConnected => plot_name!("clients_connected"),
            Plot::RowsChanged => plot_name!("rows_changed"),
            Plot::BytesOut => plot_name!("bytes_out"),
        };
        client.plot(name, value);
    }
    #[cfg(not(feature = "tracy"))]
    let _ = (plot, value);
}

/// A [`tracing_subscriber::Layer`] that turns bevy's per-system `system` spans (the engine's
/// `tracy` feature turns bevy's `trace` feature on) into Tracy zones named after the system,
/// and `WARN` and `ERROR` events into Tracy messages. A binary adds it to its subscriber next to
/// its log output; it is already filtered to what it uses.
#[cfg(feature = "tracy")]
pub fn layer<S>() -> impl tracing_subscriber::Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    tracy_layer::TracyLayer.with_filter(tracing_subscriber::filter::filter_fn(|meta| {
        (meta.is_span() && meta.name() == tracy_layer::SYSTEM_SPAN)
            || (meta.is_event() && *meta.level() <= tracing::Level::WARN)
    }))
}

#[cfg(feature = "tracy")]
mod tracy_layer {
    //! The tracing layer behind [`super::layer`].

    use std::cell::RefCell;
    use std::fmt::Write as _;

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id};
    use tracing::{Event, Subscriber};
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::registry::LookupSpan;

    /// The name of the span bevy opens around each system run.
    pub(super) const SYSTEM_SPAN: &str = "system";

    pub(super) struct TracyLayer;

    /// A system span's name, kept in the span's extensions.
    struct SystemName(String);

    thread_local! {
        /// The zones of the system spans entered on this thread, innermost last.
        static OPEN: RefCell<Vec<(Id, tracy_client::Span)>> = const { RefCell::new(Vec::new()) };
    }

    struct NameField(Option<String>);

    impl Visit for NameField {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "name" {
                self.0 = Some(value.to_owned());
            }
        }

        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "name" {
                self.0 = Some(format!("{value:?}").trim_matches('"').to_owned());
            }
        }
    }

    struct MessageText(String);

    impl Visit for MessageText {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            if field.name() == "message" {
                let _ = write!(self.0, "{value:?}");
            } else {
                let _ = write!(self.0, "{}={value:?}", field.name());
            }
        }
    }

    impl<S> Layer<S> for TracyLayer
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            if attrs.metadata().name() != SYSTEM_SPAN {
                return;
            }
            let mut name = NameField(None);
            attrs.record(&mut name);
            if let (Some(name), Some(span)) = (name.0, ctx.span(id)) {
                // Short names, as bevy prints them: `sample_mmo::systems::move_avatars` → as is.
                span.extensions_mut().insert(SystemName(name));
            }
        }

        fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
            if !tracy_client::Client::is_connected() {
                return;
            }
            let Some(client) = tracy_client::Client::running() else {
                return;
            };
            let Some(span) = ctx.span(id) else {
                return;
            };
            let extensions = span.extensions();
            let Some(SystemName(name)) = extensions.get::<SystemName>() else {
                return;
            };
            let zone = client.span_alloc(Some(name), "system", file!(), line!(), 0);
            OPEN.with(|open| open.borrow_mut().push((id.clone(), zone)));
        }

        fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
            OPEN.with(|open| {
                let mut open = open.borrow_mut();
                if open.last().is_some_and(|(top, _)| top == id) {
                    open.pop();
                }
            });
        }

        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            if !tracy_client::Client::is_connected() {
                return;
            }
            let Some(client) = tracy_client::Client::running() else {
                return;
            };
            let meta = event.metadata();
            let mut text = MessageText(String::new());
            event.record(&mut text);
            let line = format!("{} {}: {}", meta.level(), meta.target(), text.0);
            let color = if *meta.level() == tracing::Level::ERROR {
                super::ERROR_COLOR
            } else {
                0xff_c0_40_ff
            };
            client.color_message(&line, color, 0);
        }
    }
}
