//! The little dense linear algebra the bandit models need (matrices are a few hundred wide):
//! Cholesky factorisation, solves and the inverse of a symmetric positive-definite matrix.
//! ndarray has no decompositions without a LAPACK build, so these are written here.
use ndarray::{Array1, Array2};

/// Lower-triangular `L` with `L Lᵀ = a`; `None` if `a` is not positive definite.
pub fn cholesky(a: &Array2<f64>) -> Option<Array2<f64>> {
    let n = a.nrows();
    if a.ncols() != n {
        return None;
    }
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[[i, j]];
            for k in 0..j {
                s -= l[[i, k]] * l[[j, k]];
            }
            if i == j {
                if s.is_nan() || s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[[i, i]] = s.sqrt();
            } else {
                l[[i, j]] = s / l[[j, j]];
            }
        }
    }
    Some(l)
}

/// Solves `L y = b` (forward substitution).
pub fn solve_lower(l: &Array2<f64>, b: &Array1<f64>) -> Array1<f64> {
    let n = l.nrows();
    let mut y = Array1::<f64>::zeros(n);
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[[i, k]] * y[k];
        }
        y[i] = s / l[[i, i]];
    }
    y
}

/// Solves `Lᵀ x = y` (back substitution).
pub fn solve_upper_t(l: &Array2<f64>, y: &Array1<f64>) -> Array1<f64> {
    let n = l.nrows();
    let mut x = Array1::<f64>::zeros(n);
    for i in (0..n).rev() {
        let mut s = y[i];
        for k in i + 1..n {
            s -= l[[k, i]] * x[k];
        }
        x[i] = s / l[[i, i]];
    }
    x
}

/// Solves `a x = b` for symmetric positive-definite `a`.
pub fn spd_solve(a: &Array2<f64>, b: &Array1<f64>) -> Option<Array1<f64>> {
    let l = cholesky(a)?;
    Some(solve_upper_t(&l, &solve_lower(&l, b)))
}

/// Inverse of a symmetric positive-definite matrix.
pub fn spd_inverse(a: &Array2<f64>) -> Option<Array2<f64>> {
    let n = a.nrows();
    let l = cholesky(a)?;
    let mut inv = Array2::<f64>::zeros((n, n));
    for j in 0..n {
        let mut e = Array1::<f64>::zeros(n);
        e[j] = 1.0;
        let col = solve_upper_t(&l, &solve_lower(&l, &e));
        inv.column_mut(j).assign(&col);
    }
    // Symmetrise away rounding.
    let t = inv.t().to_owned();
    Some((inv + t) * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn solves_and_inverts_a_known_matrix() {
        let a = array![[4.0, 2.0, 0.6], [2.0, 2.0, 0.5], [0.6, 0.5, 3.0]];
        let l = cholesky(&a).unwrap();
        let back = l.dot(&l.t());
        assert!((&back - &a).iter().all(|d| d.abs() < 1e-12));
        let b = array![1.0, -2.0, 0.5];
        let x = spd_solve(&a, &b).unwrap();
        assert!((a.dot(&x) - &b).iter().all(|d| d.abs() < 1e-12));
        let inv = spd_inverse(&a).unwrap();
        let eye = a.dot(&inv);
        for i in 0..3 {
            for j in 0..3 {
                assert!((eye[[i, j]] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        assert!(cholesky(&array![[1.0, 2.0], [2.0, 1.0]]).is_none(), "indefinite");
    }
}
