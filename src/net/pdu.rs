//! Reading PDUs off an association. P-DATA-TF PDUs, nearly every byte an association carries,
//! are read here: each presentation data value is a slice of the bytes read from the socket
//! (`bytes::Bytes`, no copy), where dicom-ul's reader copies each one twice (`copy_to_bytes`,
//! then `to_vec`). Every other PDU is read by dicom-ul (`dicom_ul::read_pdu`, strict: no PDU
//! above the maximum length the node announced). The same function reads PDUs from a buffer for
//! the node and for the fuzzer (`fuzz::stream`). Each PDU must be complete within the read
//! timeout, as with dicom-ul's reader.

use bytes::{Buf, Bytes, BytesMut};
use dicom_ul::Pdu;
use dicom_ul::association::{AsyncAssociation, AsyncServerAssociation};
use dicom_ul::pdu::PDataValueType;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// One presentation data value of a P-DATA-TF PDU (PS3.8 9.3.5.1 and Annex E).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pdv {
    pub(crate) presentation_context_id: u8,
    pub(crate) value_type: PDataValueType,
    /// The last fragment of its command set or data set.
    pub(crate) is_last: bool,
    pub(crate) data: Bytes,
}

/// A PDU read off an association.
#[derive(Debug)]
pub(crate) enum Incoming {
    PData(Vec<Pdv>),
    Other(Pdu),
}

/// Why no PDU could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiveError {
    #[error("no PDU within the read timeout")]
    Timeout,
    #[error("connection closed by the peer")]
    Closed,
    #[error("cannot read from the connection: {0}")]
    Io(std::io::Error),
    #[error("malformed P-DATA-TF PDU: {0}")]
    Malformed(String),
    #[error("{0}")]
    Pdu(#[from] dicom_ul::pdu::ReadError),
}

/// PDU type of P-DATA-TF.
const P_DATA_TF: u8 = 0x04;
/// PDU type and reserved byte, then the PDU length (u32, big endian).
const PDU_HEADER_BYTES: usize = 6;
/// Item length (u32), presentation context ID and message control header.
const PDV_HEADER_BYTES: usize = 6;
/// The least the read buffer is given room for before each read.
const READ_CHUNK: usize = 64 << 10;

/// Reads the next PDU of `association`; it must be complete within `timeout` (a peer that
/// trickles its bytes cannot hold the association open).
pub(crate) async fn receive<S: super::Stream>(
    association: &mut AsyncServerAssociation<S>,
    timeout: Duration,
) -> Result<Incoming, ReceiveError> {
    let max_pdu = association.acceptor_max_pdu_length();
    let (socket, buffer) = association.get_mut();
    read_pdu(
        socket,
        buffer,
        max_pdu,
        tokio::time::Instant::now() + timeout,
    )
    .await
}

/// Reads from `socket` into `buffer` until it holds a whole PDU, and takes it; `deadline` is
/// for the whole PDU, not for each read.
async fn read_pdu<R: tokio::io::AsyncRead + Unpin>(
    socket: &mut R,
    buffer: &mut BytesMut,
    max_pdu: u32,
    deadline: tokio::time::Instant,
) -> Result<Incoming, ReceiveError> {
    loop {
        if let Some(incoming) = take_pdu(buffer, max_pdu)? {
            return Ok(incoming);
        }
        // Room for the rest of the PDU begun (its length was checked against the maximum), or
        // for the next chunk of the stream.
        let wanted = pending_pdu_bytes(buffer).saturating_sub(buffer.len());
        buffer.reserve(wanted.max(READ_CHUNK));
        match tokio::time::timeout_at(deadline, socket.read_buf(buffer)).await {
            Err(_) => return Err(ReceiveError::Timeout),
            Ok(Err(e)) => return Err(ReceiveError::Io(e)),
            Ok(Ok(0)) => return Err(ReceiveError::Closed),
            Ok(Ok(_)) => {}
        }
    }
}

/// The whole length of the PDU that `buffer` begins with, once its header is in (else 0).
fn pending_pdu_bytes(buffer: &[u8]) -> usize {
    match buffer.get(2..PDU_HEADER_BYTES) {
        Some(length) => {
            let length = u32::from_be_bytes(length.try_into().expect("four bytes"));
            PDU_HEADER_BYTES.saturating_add(length as usize)
        }
        None => 0,
    }
}

/// Takes the PDU that `buffer` begins with off its front, if it holds all of it (`None`: more
/// bytes are needed). A PDU longer than `max_pdu` is refused as soon as its header is in.
pub(crate) fn take_pdu(
    buffer: &mut BytesMut,
    max_pdu: u32,
) -> Result<Option<Incoming>, ReceiveError> {
    if buffer.first() != Some(&P_DATA_TF) {
        if buffer.is_empty() {
            return Ok(None);
        }
        let mut unread = &buffer[..];
        let before = unread.len();
        let pdu = dicom_ul::read_pdu(&mut unread, max_pdu, true)?;
        let used = before - unread.len();
        return Ok(pdu.map(|pdu| {
            buffer.advance(used);
            Incoming::Other(pdu)
        }));
    }
    if buffer.len() < PDU_HEADER_BYTES {
        return Ok(None);
    }
    let length = pending_pdu_bytes(buffer) - PDU_HEADER_BYTES;
    if length > max_pdu as usize {
        return Err(ReceiveError::Malformed(format!(
            "PDU of {length} bytes, above the maximum of {max_pdu}"
        )));
    }
    if buffer.len() < PDU_HEADER_BYTES + length {
        return Ok(None);
    }
    let mut body = buffer.split_to(PDU_HEADER_BYTES + length).freeze();
    body.advance(PDU_HEADER_BYTES);
    pdata_values(body).map(|values| Some(Incoming::PData(values)))
}

/// The presentation data values of a P-DATA-TF PDU's body, each a slice of it.
fn pdata_values(mut body: Bytes) -> Result<Vec<Pdv>, ReceiveError> {
    let mut values = Vec::new();
    while body.has_remaining() {
        if body.remaining() < PDV_HEADER_BYTES {
            return Err(ReceiveError::Malformed(format!(
                "{} bytes left after the last value, too few for another",
                body.remaining()
            )));
        }
        let item_length = body.get_u32() as usize;
        if item_length < 2 || item_length > body.remaining() {
            return Err(ReceiveError::Malformed(format!(
                "value item of {item_length} bytes where {} remain",
                body.remaining()
            )));
        }
        let presentation_context_id = body.get_u8();
        let header = body.get_u8();
        values.push(Pdv {
            presentation_context_id,
            value_type: if header & 0x01 != 0 {
                PDataValueType::Command
            } else {
                PDataValueType::Data
            },
            is_last: header & 0x02 != 0,
            data: body.split_to(item_length - 2),
        });
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::Rng;
    use dicom_ul::pdu::PDataValue;

    const MAX_PDU: u32 = 16384;

    fn encode(pdu: &Pdu) -> Vec<u8> {
        let mut bytes = Vec::new();
        dicom_ul::write_pdu(&mut bytes, pdu).unwrap();
        bytes
    }

    /// A stream of P-DATA-TF PDUs (several values each, empty and full ones) and an
    /// A-RELEASE-RQ, fed in chunks of every size from 1 byte: the same values as dicom-ul's reader
    /// gives, and the release after them.
    #[test]
    fn values_are_those_dicom_ul_reads_whatever_the_read_boundaries() {
        let mut rng = Rng::new(7);
        let mut pdus = Vec::new();
        for n in 0..6 {
            let data = (0..1 + n % 3)
                .map(|i| PDataValue {
                    presentation_context_id: 1 + 2 * (i as u8),
                    value_type: if i % 2 == 0 {
                        PDataValueType::Data
                    } else {
                        PDataValueType::Command
                    },
                    is_last: n % 2 == 1,
                    data: (0..[0, 1, 700, 5000][(n + i) % 4])
                        .map(|_| rng.below(256) as u8)
                        .collect(),
                })
                .collect();
            pdus.push(Pdu::PData { data });
        }
        pdus.push(Pdu::ReleaseRQ);
        let stream: Vec<u8> = pdus.iter().flat_map(encode).collect();
        for chunk in [1, 2, 5, 6, 7, 100, 4096, stream.len()] {
            let mut buffer = BytesMut::new();
            let mut read = Vec::new();
            for piece in stream.chunks(chunk) {
                buffer.extend_from_slice(piece);
                while let Some(incoming) = take_pdu(&mut buffer, MAX_PDU).unwrap() {
                    read.push(incoming);
                }
            }
            assert!(buffer.is_empty());
            assert_eq!(read.len(), pdus.len(), "chunks of {chunk}");
            for (incoming, pdu) in read.iter().zip(&pdus) {
                match (incoming, pdu) {
                    (Incoming::PData(values), Pdu::PData { data }) => {
                        let theirs: Vec<Pdv> = data
                            .iter()
                            .map(|v| Pdv {
                                presentation_context_id: v.presentation_context_id,
                                value_type: v.value_type.clone(),
                                is_last: v.is_last,
                                data: Bytes::copy_from_slice(&v.data),
                            })
                            .collect();
                        assert_eq!(values, &theirs, "chunks of {chunk}");
                    }
                    (Incoming::Other(Pdu::ReleaseRQ), Pdu::ReleaseRQ) => {}
                    other => panic!("chunks of {chunk}: {other:?}"),
                }
            }
        }
    }

    /// A P-DATA-TF body of `items` (item length, context, header, data bytes).
    fn pdata(items: &[(u32, &[u8])]) -> Vec<u8> {
        let body: Vec<u8> = items
            .iter()
            .flat_map(|(length, rest)| length.to_be_bytes().into_iter().chain(rest.iter().copied()))
            .collect();
        let mut pdu = vec![P_DATA_TF, 0];
        pdu.extend((body.len() as u32).to_be_bytes());
        pdu.extend(body);
        pdu
    }

    /// Malformed P-DATA-TF PDUs are refused, none is taken for incomplete, and nothing panics:
    /// an item shorter than its header, one longer than what is left, a few stray bytes after
    /// the last item, and a PDU above the maximum length (refused from its header alone).
    #[test]
    fn malformed_pdata_is_refused() {
        let cases: [(&str, Vec<u8>); 4] = [
            ("item length 1", pdata(&[(1, &[1, 0])])),
            ("item beyond the PDU", pdata(&[(9, &[1, 0, 5, 5])])),
            ("stray bytes", pdata(&[(3, &[1, 2, 7]), (0, &[])])),
            ("above the maximum", {
                let mut header = vec![P_DATA_TF, 0];
                header.extend((MAX_PDU + 1).to_be_bytes());
                header
            }),
        ];
        for (what, bytes) in cases {
            let mut buffer = BytesMut::from(&bytes[..]);
            assert!(
                matches!(
                    take_pdu(&mut buffer, MAX_PDU),
                    Err(ReceiveError::Malformed(_))
                ),
                "{what}"
            );
        }
        // A well-formed one, whole and then one byte short.
        let good = pdata(&[(5, &[3, 0b11, 9, 8, 7])]);
        let mut buffer = BytesMut::from(&good[..good.len() - 1]);
        assert!(take_pdu(&mut buffer, MAX_PDU).unwrap().is_none());
        buffer.extend_from_slice(&good[good.len() - 1..]);
        match take_pdu(&mut buffer, MAX_PDU).unwrap() {
            Some(Incoming::PData(values)) => assert_eq!(
                values,
                [Pdv {
                    presentation_context_id: 3,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: Bytes::from_static(&[9, 8, 7]),
                }]
            ),
            other => panic!("{other:?}"),
        }
        // Another PDU type above the maximum: refused by dicom-ul.
        let mut buffer = BytesMut::from(&[0x05u8, 0, 0x7F, 0xFF, 0xFF, 0xFF][..]);
        assert!(matches!(
            take_pdu(&mut buffer, MAX_PDU),
            Err(ReceiveError::Pdu(_))
        ));
    }

    /// The read timeout is for the whole PDU: a peer that sends a 15-byte PDU a byte every 20
    /// ms, each read well within a 150 ms timeout, is cut off; the same PDU sent at once is read.
    #[tokio::test]
    async fn a_pdu_trickled_slower_than_the_timeout_times_out() {
        use tokio::io::AsyncWriteExt;
        let pdu = pdata(&[(5, &[1, 0b10, 1, 2, 3])]);
        let timeout = Duration::from_millis(150);

        let (mut peer, mut socket) = tokio::io::duplex(1024);
        let trickle = pdu.clone();
        let sender = tokio::spawn(async move {
            for byte in trickle {
                if peer.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut buffer = BytesMut::new();
        let started = tokio::time::Instant::now();
        let read = read_pdu(&mut socket, &mut buffer, MAX_PDU, started + timeout).await;
        // Read byte by byte, each read in time, it would have been whole after 300 ms.
        assert!(matches!(read, Err(ReceiveError::Timeout)), "{read:?}");
        sender.abort();

        let (mut peer, mut socket) = tokio::io::duplex(1024);
        peer.write_all(&pdu).await.unwrap();
        let mut buffer = BytesMut::new();
        let deadline = tokio::time::Instant::now() + timeout;
        let read = read_pdu(&mut socket, &mut buffer, MAX_PDU, deadline).await;
        assert!(
            matches!(read, Ok(Incoming::PData(ref v)) if v.len() == 1),
            "{read:?}"
        );
        // The peer closes: no PDU, and the association ends as lost.
        drop(peer);
        let read = read_pdu(&mut socket, &mut buffer, MAX_PDU, deadline).await;
        assert!(matches!(read, Err(ReceiveError::Closed)), "{read:?}");
    }
}
