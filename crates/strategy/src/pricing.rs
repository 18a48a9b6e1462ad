//! The exact price of a cart with offers applied.
//!
//! Order, so that the same offers always give the same price: first the offers that change
//! lines (bundle, warranty, upgrade, then percent-off on the lines), then spend-X-save-Y on the
//! subtotal, then coupons. Two offers combine only when one lists the other in `stacks_with`;
//! anything else is refused, never silently dropped. The total discount never exceeds the list
//! price, so a final price is never negative, and every sum is overflow-checked.
use crate::catalog::{Catalog, Offer, OfferKind};
use crate::money::{Cents, MoneyError};

/// A cart line as the caller sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    /// The product.
    pub sku: String,
    /// Units.
    pub qty: u32,
}

/// One line of a quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteLine {
    /// The product.
    pub sku: String,
    /// Units.
    pub qty: u32,
    /// List price per unit.
    pub unit_price: Cents,
    /// The offer that put the line in the cart (bundle, warranty, upgrade), if any.
    pub added_by: Option<String>,
}

/// What the customer would pay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The lines after the offers (a bundle's items added, an upgrade swapped in).
    pub lines: Vec<QuoteLine>,
    /// Sum of list prices of `lines`.
    pub list_price: Cents,
    /// Total discount, `0 ≤ discount ≤ list_price`.
    pub discount: Cents,
    /// `list_price − discount`.
    pub final_price: Cents,
    /// Discount per applied offer, in the order applied.
    pub by_offer: Vec<(String, Cents)>,
}

/// Why a cart could not be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    /// A line names a SKU the catalog lacks.
    #[error("cart: unknown SKU `{0}`")]
    UnknownSku(String),
    /// A line has quantity 0.
    #[error("cart: `{0}` has quantity 0")]
    ZeroQuantity(String),
    /// Two offers may not be combined.
    #[error("offers `{0}` and `{1}` do not stack")]
    DoesNotStack(String, String),
    /// An upgrade's `from` product is not in the cart.
    #[error("offer `{offer}`: `{sku}` is not in the cart")]
    NotInCart {
        /// The offer.
        offer: String,
        /// The SKU it needs.
        sku: String,
    },
    /// An amount overflowed.
    #[error(transparent)]
    Money(#[from] MoneyError),
}

fn order(kind: &OfferKind) -> u8 {
    match kind {
        OfferKind::Bundle { .. } | OfferKind::Warranty { .. } | OfferKind::Upgrade { .. } => 0,
        OfferKind::PercentOff { .. } => 1,
        OfferKind::SpendSave { .. } => 2,
        OfferKind::Coupon { .. } => 3,
    }
}

/// Prices `cart` with `offers` applied (any number, in any order; see the module docs).
pub fn quote(catalog: &Catalog, cart: &[CartLine], offers: &[&Offer]) -> Result<Quote, PriceError> {
    for (i, a) in offers.iter().enumerate() {
        for b in &offers[i + 1..] {
            if a.id == b.id || !(a.stacks_with.contains(&b.id) || b.stacks_with.contains(&a.id)) {
                return Err(PriceError::DoesNotStack(a.id.clone(), b.id.clone()));
            }
        }
    }
    let unit = |sku: &str| -> Result<Cents, PriceError> {
        catalog
            .product(sku)
            .map(|p| p.price)
            .ok_or_else(|| PriceError::UnknownSku(sku.to_string()))
    };
    let mut lines = Vec::with_capacity(cart.len() + 2);
    for l in cart {
        if l.qty == 0 {
            return Err(PriceError::ZeroQuantity(l.sku.clone()));
        }
        lines.push(QuoteLine {
            sku: l.sku.clone(),
            qty: l.qty,
            unit_price: unit(&l.sku)?,
            added_by: None,
        });
    }
    let mut sorted: Vec<&Offer> = offers.to_vec();
    sorted.sort_by_key(|o| order(&o.kind));
    let sum = |lines: &[QuoteLine], keep: &dyn Fn(&QuoteLine) -> bool| -> Result<Cents, MoneyError> {
        lines
            .iter()
            .filter(|l| keep(l))
            .try_fold(Cents::ZERO, |acc, l| acc.checked_add(l.unit_price.times(l.qty)?))
    };
    let mut by_offer = Vec::with_capacity(sorted.len());
    let mut discount = Cents::ZERO;
    for o in sorted {
        let d = match &o.kind {
            OfferKind::Bundle { items, price } => {
                let mut list = Cents::ZERO;
                for sku in items {
                    let u = unit(sku)?;
                    list = list.checked_add(u)?;
                    lines.push(QuoteLine {
                        sku: sku.clone(),
                        qty: 1,
                        unit_price: u,
                        added_by: Some(o.id.clone()),
                    });
                }
                list.checked_sub(*price)?.max(Cents::ZERO)
            }
            OfferKind::Warranty { sku, price, .. } => {
                let u = unit(sku)?;
                lines.push(QuoteLine {
                    sku: sku.clone(),
                    qty: 1,
                    unit_price: u,
                    added_by: Some(o.id.clone()),
                });
                u.checked_sub(*price)?.max(Cents::ZERO)
            }
            OfferKind::Upgrade { from, to, extra } => {
                let line = lines
                    .iter_mut()
                    .find(|l| l.sku == *from && l.added_by.is_none())
                    .ok_or_else(|| PriceError::NotInCart {
                        offer: o.id.clone(),
                        sku: from.clone(),
                    })?;
                let from_price = line.unit_price;
                let to_price = unit(to)?;
                // One unit is upgraded; the rest of the line stays as it was.
                if line.qty > 1 {
                    line.qty -= 1;
                } else {
                    line.qty = 0;
                }
                lines.push(QuoteLine {
                    sku: to.clone(),
                    qty: 1,
                    unit_price: to_price,
                    added_by: Some(o.id.clone()),
                });
                to_price.checked_sub(from_price.checked_add(*extra)?)?.max(Cents::ZERO)
            }
            OfferKind::PercentOff {
                basis_points,
                category,
                max_discount,
            } => {
                let base = sum(&lines, &|l| {
                    category
                        .as_ref()
                        .is_none_or(|c| catalog.product(&l.sku).is_some_and(|p| &p.category == c))
                })?;
                let d = base.percent(*basis_points)?;
                max_discount.map_or(d, |m| d.min(m))
            }
            OfferKind::SpendSave {
                threshold,
                save,
                repeat,
            } => {
                let subtotal = sum(&lines, &|_| true)?.checked_sub(discount)?;
                let times = if subtotal.0 < threshold.0 {
                    0
                } else if *repeat {
                    subtotal.0 / threshold.0
                } else {
                    1
                };
                Cents(save.0.checked_mul(times).ok_or(MoneyError::Overflow)?)
            }
            OfferKind::Coupon { amount, min_spend } => {
                let subtotal = sum(&lines, &|_| true)?.checked_sub(discount)?;
                if subtotal >= *min_spend {
                    *amount
                } else {
                    Cents::ZERO
                }
            }
        };
        // Never more than what is left to pay.
        let left = sum(&lines, &|_| true)?.checked_sub(discount)?;
        let d = d.min(left).max(Cents::ZERO);
        discount = discount.checked_add(d)?;
        by_offer.push((o.id.clone(), d));
    }
    lines.retain(|l| l.qty > 0);
    let list_price = sum(&lines, &|_| true)?;
    Ok(Quote {
        final_price: list_price.checked_sub(discount)?,
        lines,
        list_price,
        discount,
        by_offer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn catalog() -> Catalog {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(
            &p,
            r#"
[[product]]
sku = "PH"
name_en = "phone"
category = "phone"
price = "3999.00"
[[product]]
sku = "PH-PRO"
name_en = "phone pro"
category = "phone"
price = "4999.00"
[[product]]
sku = "PB"
name_en = "power bank"
category = "accessory"
price = "129.00"
[[product]]
sku = "WAR"
name_en = "warranty"
category = "service"
price = "299.00"
[[product]]
sku = "CASE"
name_en = "case"
category = "accessory"
price = "0.05"

[[offer]]
id = "care"
kind = "bundle"
items = ["WAR", "PB"]
price = "329.00"
stacks_with = ["m300", "c20"]
[[offer]]
id = "war"
kind = "warranty"
sku = "WAR"
price = "199.00"
for_category = "phone"
[[offer]]
id = "up"
kind = "upgrade"
from = "PH"
to = "PH-PRO"
extra = "700.00"
stacks_with = ["acc10"]
[[offer]]
id = "acc10"
kind = "percent_off"
percent = 10
category = "accessory"
stacks_with = ["care"]
[[offer]]
id = "m300"
kind = "spend_save"
threshold = "300"
save = "30"
repeat = true
stacks_with = ["c20"]
[[offer]]
id = "c20"
kind = "coupon"
amount = "20"
min_spend = "100"
[[offer]]
id = "huge"
kind = "coupon"
amount = "100000"
"#,
        )
        .unwrap();
        Catalog::load(&p).unwrap()
    }

    fn cart(lines: &[(&str, u32)]) -> Vec<CartLine> {
        lines
            .iter()
            .map(|(s, q)| CartLine {
                sku: s.to_string(),
                qty: *q,
            })
            .collect()
    }

    #[test]
    fn table_of_prices() {
        let c = catalog();
        let o = |id: &str| c.offer(id).unwrap();
        // (cart, offers, list, discount, final)
        // (cart, offers, list, discount, final) in cents.
        type Case<'a> = (Vec<CartLine>, Vec<&'a str>, i64, i64, i64);
        let cases: Vec<Case<'_>> = vec![
            // The battery example: warranty + power bank for 329 instead of 428.
            (cart(&[]), vec!["care"], 42_800, 9_900, 32_900),
            (cart(&[("PH", 1)]), vec!["care"], 442_700, 9_900, 432_800),
            (cart(&[("PH", 1)]), vec!["war"], 429_800, 10_000, 419_800),
            // Upgrade one of two phones: pays 3999 + 700 for a 4999 phone.
            (cart(&[("PH", 2)]), vec!["up"], 899_800, 30_000, 869_800),
            // 满减 300-30, repeating: 3999 → 13 × 30 off.
            (cart(&[("PH", 1)]), vec!["m300"], 399_900, 39_000, 360_900),
            // Below the threshold nothing; exactly at it, once.
            (cart(&[("PB", 2)]), vec!["m300"], 25_800, 0, 25_800),
            (
                cart(&[("PB", 2), ("CASE", 20), ("CASE", 20), ("CASE", 2)]),
                vec!["m300"],
                25_800 + 210,
                0,
                26_010,
            ),
            // Coupon needs its minimum spend; stacks after 满减 on what is left.
            (cart(&[("PB", 3)]), vec!["m300", "c20"], 38_700, 3_000 + 2_000, 33_700),
            (cart(&[("CASE", 1)]), vec!["c20"], 5, 0, 5),
            // 10 % of 0.05 is half a cent: rounds up to 0.01.
            (cart(&[("CASE", 1)]), vec!["acc10"], 5, 1, 4),
            // Percent-off only on its category: the phone is not discounted.
            (cart(&[("PH", 1), ("PB", 1)]), vec!["acc10"], 412_800, 1_290, 411_510),
            // A coupon bigger than the cart: the price is 0, never negative.
            (cart(&[("PB", 1)]), vec!["huge"], 12_900, 12_900, 0),
            // Nothing at all.
            (cart(&[]), vec![], 0, 0, 0),
        ];
        for (cart, ids, list, discount, fin) in cases {
            let offers: Vec<&Offer> = ids.iter().map(|i| o(i)).collect();
            let q = quote(&c, &cart, &offers).unwrap();
            assert_eq!(
                (q.list_price, q.discount, q.final_price),
                (Cents(list), Cents(discount), Cents(fin)),
                "{cart:?} {ids:?}: {q:?}"
            );
        }
    }

    #[test]
    fn bad_carts_and_unstackable_offers_are_refused() {
        let c = catalog();
        let o = |id: &str| c.offer(id).unwrap();
        assert_eq!(
            quote(&c, &cart(&[("PH", 1)]), &[o("war"), o("c20")]),
            Err(PriceError::DoesNotStack("war".into(), "c20".into()))
        );
        assert!(matches!(
            quote(&c, &cart(&[("PH", 1)]), &[o("c20"), o("c20")]),
            Err(PriceError::DoesNotStack(..))
        ));
        assert_eq!(
            quote(&c, &cart(&[("NOPE", 1)]), &[]),
            Err(PriceError::UnknownSku("NOPE".into()))
        );
        assert_eq!(
            quote(&c, &cart(&[("PH", 0)]), &[]),
            Err(PriceError::ZeroQuantity("PH".into()))
        );
        assert!(matches!(
            quote(&c, &cart(&[("PB", 1)]), &[o("up")]),
            Err(PriceError::NotInCart { .. })
        ));
        assert_eq!(
            quote(&c, &cart(&[("PH", u32::MAX), ("PH", u32::MAX), ("PH", u32::MAX)]), &[]).map(|_| ()),
            Ok(()),
            "4 billion phones still fit in 64 bits"
        );
    }

    proptest! {
        #[test]
        fn final_price_is_never_negative_and_adds_up(
            qty in proptest::collection::vec((0usize..5, 1u32..1000), 0..6),
            pick in proptest::collection::vec(0usize..7, 0..3),
        ) {
            let c = catalog();
            let skus = ["PH", "PH-PRO", "PB", "WAR", "CASE"];
            let ids = ["care", "war", "up", "acc10", "m300", "c20", "huge"];
            let cart: Vec<CartLine> = qty.iter().map(|&(s, q)| CartLine { sku: skus[s].into(), qty: q }).collect();
            let offers: Vec<&Offer> = pick.iter().map(|&i| c.offer(ids[i]).unwrap()).collect();
            if let Ok(q) = quote(&c, &cart, &offers) {
                prop_assert!(q.final_price >= Cents::ZERO);
                prop_assert!(q.discount >= Cents::ZERO && q.discount <= q.list_price);
                prop_assert_eq!(q.list_price.checked_sub(q.discount).unwrap(), q.final_price);
                let total = q.by_offer.iter().try_fold(Cents::ZERO, |a, (_, d)| a.checked_add(*d)).unwrap();
                prop_assert_eq!(total, q.discount);
            }
        }
    }
}
