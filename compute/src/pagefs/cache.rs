//! A bounded in-memory cache of source pages fetched ahead of the reads that need them.
//! Pages at the compute's LSN never change, so an entry is always right for a block the
//! overlay does not hold (the relation file checks that before asking).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::names::RelTag;

type Key = (RelTag, u32);

pub struct PageCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    pages: HashMap<Key, Arc<Vec<u8>>>,
    /// Insertion order: the oldest page goes first when full.
    order: VecDeque<Key>,
}

impl PageCache {
    pub fn new(capacity_pages: usize) -> PageCache {
        PageCache {
            capacity: capacity_pages.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Takes a page out: read-ahead pages are read once, then the kernel's cache holds them.
    pub fn take(&self, tag: RelTag, block: u32) -> Option<Arc<Vec<u8>>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.pages.remove(&(tag, block))
    }

    pub fn insert(&self, tag: RelTag, block: u32, page: Arc<Vec<u8>>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.pages.insert((tag, block), page).is_none() {
            inner.order.push_back((tag, block));
        }
        while inner.pages.len() > self.capacity {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.pages.remove(&old);
                }
                None => break,
            }
        }
        // Keys taken out linger in `order`; drop them when they pile up.
        if inner.order.len() > 2 * self.capacity {
            let Inner { pages, order } = &mut *inner;
            order.retain(|k| pages.contains_key(k));
        }
    }
}
