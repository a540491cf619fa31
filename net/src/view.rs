//! The announcement exchange ([`sunswarm_protocol::view`]): nodes answer with the signed
//! announcements their gossip holds for a model; a new client asks a couple of the nodes it is
//! connected to and checks every record as gossip does.

use std::time::Duration;

use futures::StreamExt;
use libp2p::{PeerId, StreamProtocol};
use serde_bytes::ByteBuf;
use sunswarm_protocol::io::{FrameReader, read_message, write_message};
use sunswarm_protocol::view::{MAX_VIEW_RECORDS, ViewRequest, ViewResponse};
use sunswarm_protocol::{Announcement, ModelDigest, VIEW_PROTOCOL};
use tracing::debug;

use crate::Network;
use crate::stream::IncomingStreams;

/// How long an asker may take to send its request, and a node to answer.
pub const VIEW_TIMEOUT: Duration = Duration::from_secs(2);
/// Most view streams a node answers at once; more are dropped unread.
const MAX_CONCURRENT: usize = 16;

pub fn protocol() -> StreamProtocol {
    StreamProtocol::new(VIEW_PROTOCOL)
}

/// Answers view requests on `incoming` until it ends.
pub async fn serve(net: Network, incoming: IncomingStreams) {
    incoming
        .for_each_concurrent(MAX_CONCURRENT, |(peer, mut s)| {
            let net = net.clone();
            async move {
                let answer = async {
                    // A request is a model id: anything longer is not one.
                    let req: ViewRequest = FrameReader::with_limit(256).next(&mut s).await.ok()?;
                    let mut records = net.signed_view(req.model_id).await.ok()?;
                    records.truncate(MAX_VIEW_RECORDS);
                    let resp = ViewResponse {
                        records: records.into_iter().map(ByteBuf::from).collect(),
                    };
                    write_message(&mut s, &resp).await.ok()
                };
                if tokio::time::timeout(VIEW_TIMEOUT, answer).await.is_err() {
                    debug!(%peer, "view request timed out");
                }
            }
        })
        .await
}

/// The announcements of `model_id` that `peer` holds, each checked (signature, not from the
/// future, of this model): live ones, and withdrawals of peers that left (which the caller
/// must honour over older live copies); `None` if it does not answer in time.
pub async fn fetch(
    net: &Network,
    peer: PeerId,
    model_id: &ModelDigest,
) -> Option<Vec<Announcement>> {
    let ask = async {
        let mut s = net.control().open_stream(peer, protocol()).await.ok()?;
        write_message(
            &mut s,
            &ViewRequest {
                model_id: *model_id,
            },
        )
        .await
        .ok()?;
        read_message::<_, ViewResponse>(&mut s, &mut Vec::new())
            .await
            .ok()
    };
    let resp = tokio::time::timeout(VIEW_TIMEOUT, ask).await.ok()??;
    let now = crate::now_ms();
    Some(
        resp.records
            .iter()
            .filter_map(|r| crate::announce::decode_verified(r, now).ok())
            .filter(|a| &a.model_id == model_id)
            .collect(),
    )
}

/// Asks up to `ask` of the peers this host is connected to for their views of `model_id`, at
/// once, and merges what they answer (newest per peer, a withdrawal included).
pub async fn fetch_from_connected(
    net: &Network,
    model_id: &ModelDigest,
    ask: usize,
) -> Vec<Announcement> {
    use rand::seq::IteratorRandom;
    let Ok(connected) = net.direct_peers().await else {
        return Vec::new();
    };
    let chosen: Vec<PeerId> = connected.into_iter().choose_multiple(&mut rand::rng(), ask);
    let views = futures::future::join_all(chosen.iter().map(|p| fetch(net, *p, model_id))).await;
    crate::discovery::newest_per_peer(views.into_iter().flatten().flatten())
        .into_values()
        .collect()
}
