"""Vectorised gene-regulatory kinetics: rates, steady states, trajectories, noise propagation.

The expression ``x_i`` of gene ``i`` follows

.. math::

    \\frac{dx_i}{dt} = m_i \\left(s_i f_i(x) + a_i\\right) - d_i x_i,
    \\qquad f_i(x) = \\beta_i + (1 - \\beta_i)\\,\\sigma\\Big(b_i + \\sum_j w_{ji} H_j(x_j)\\Big),

where ``H_j(x_j) = (v_j x_j)^{n_j} / ((v_j x_j)^{n_j} + K_j^{n_j})`` is the Hill
occupancy of regulator ``j`` (``v_j`` scales its activity, e.g. a drug),
``w_ji`` the signed edge strength, ``sigma`` the logistic function, ``m_i`` the
maximal rate, ``s_i`` a multiplier on regulated transcription (cell type,
knockout, knockdown), ``a_i`` an additive, regulator-independent rate (CRISPR
activation) and ``d_i`` the degradation rate. Every quantity is evaluated for a
batch of conditions at once with one sparse matrix product per step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.integrate import solve_ivp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu
from scipy.special import expit

from aivc.sim._network import GeneNetwork

__all__ = ["Kinetics", "RateInputs", "SteadyState"]

#: Most ODE variables (conditions x genes) integrated at once.
_MAX_ODE_VARIABLES = 200_000

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class RateInputs:
    """Condition-specific inputs to the kinetics for a batch of ``B`` conditions.

    Attributes
    ----------
    scale
        ``(B, n_genes)`` multiplier on regulated transcription (cell-type master
        levels, knockout 0, knockdown ``1 - efficiency``).
    add
        ``(B, n_genes)`` regulator-independent transcription in units of the
        maximal rate (CRISPR activation).
    activity
        ``(B, n_regulators)`` multiplier on each regulator's activity (drugs).
    """

    scale: np.ndarray
    add: np.ndarray
    activity: np.ndarray

    @property
    def n(self) -> int:
        """Number of conditions in the batch."""
        return self.scale.shape[0]

    def take(self, rows: np.ndarray) -> RateInputs:
        """The inputs of a subset of conditions."""
        return RateInputs(self.scale[rows], self.add[rows], self.activity[rows])


@dataclass(frozen=True, eq=False)
class SteadyState:
    """Result of :meth:`Kinetics.steady_state`.

    Attributes
    ----------
    x
        ``(B, n_genes)`` steady-state expression.
    converged
        ``(B,)`` whether each condition met the tolerance.
    n_iter
        Fixed-point iterations used.
    """

    x: np.ndarray
    converged: np.ndarray
    n_iter: int


class Kinetics:
    """Vectorised evaluation of a :class:`~aivc.sim.GeneNetwork`'s dynamics.

    Parameters
    ----------
    network
        The network and its kinetic parameters.
    """

    def __init__(self, network: GeneNetwork) -> None:
        self.network = network
        self.regulators = np.asarray(network.regulators)
        self.weights = network.weight_matrix()  # regulators x genes
        self.hill = np.asarray(network.hill, dtype=np.float64)
        self.log_threshold = np.log(np.asarray(network.threshold, dtype=np.float64))
        self.bias = np.asarray(network.bias, dtype=np.float64)
        self.basal = np.asarray(network.basal, dtype=np.float64)
        self.max_rate = np.asarray(network.max_rate, dtype=np.float64)
        self.degradation = np.asarray(network.degradation, dtype=np.float64)
        # a floor for relative convergence checks: far below any level a gene reaches
        self._floor = 1e-9 * self.max_rate / self.degradation
        self._w_rr: sp.csr_matrix = self.weights[:, self.regulators].tocsr()
        # feedback loops: strongly connected groups of regulators; the Jacobian is
        # block-triangular over them, so stability is decided block by block
        n_comp, labels = connected_components(self._w_rr, directed=True, connection="strong")
        sizes = np.bincount(labels, minlength=n_comp)
        self._loops = [np.flatnonzero(labels == c) for c in np.flatnonzero(sizes > 1)]

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return self.network.n_genes

    @property
    def n_regulators(self) -> int:
        """Number of regulators."""
        return len(self.regulators)

    def neutral_inputs(self, n: int) -> RateInputs:
        """Inputs of ``n`` unperturbed conditions (all multipliers 1, no activation)."""
        return RateInputs(
            scale=np.ones((n, self.n_genes)),
            add=np.zeros((n, self.n_genes)),
            activity=np.ones((n, self.n_regulators)),
        )

    # ------------------------------------------------------------------ rates
    def occupancy(self, x: np.ndarray, inputs: RateInputs) -> np.ndarray:
        """``(B, n_regulators)`` Hill occupancy of each regulator's binding sites."""
        a = x[:, self.regulators] * inputs.activity
        with np.errstate(divide="ignore"):
            log_a = np.log(np.maximum(a, 0.0))
        return expit(self.hill * (log_a - self.log_threshold))

    def promoter(self, occupancy: np.ndarray) -> np.ndarray:
        """``(B, n_genes)`` promoter log-odds from regulator occupancies."""
        return self.bias + np.asarray(occupancy @ self.weights)

    def production(self, x: np.ndarray, inputs: RateInputs) -> np.ndarray:
        """``(B, n_genes)`` transcription rates at state ``x``."""
        z = self.promoter(self.occupancy(x, inputs))
        f = self.basal + (1.0 - self.basal) * expit(z)
        return self.max_rate * (inputs.scale * f + inputs.add)

    def derivative(self, x: np.ndarray, inputs: RateInputs) -> np.ndarray:
        """``dx/dt`` at state ``x``."""
        return self.production(x, inputs) - self.degradation * x

    # ------------------------------------------------------------ steady state
    def steady_state(
        self,
        inputs: RateInputs,
        *,
        x0: np.ndarray | None = None,
        tol: float = 1e-10,
        max_iter: int = 2000,
        fallback: bool = True,
    ) -> SteadyState:
        """Steady states of a batch of conditions.

        Damped fixed-point iteration ``x <- x + alpha (P(x)/d - x)``: this is
        forward Euler in a time rescaled per gene by its degradation rate, so it
        settles into the attractor the dynamics reach from ``x0``. The damping
        ``alpha`` of a condition is halved whenever its residual grows (negative
        feedback loops) and relaxed back towards 1 while it shrinks.

        Conditions that miss the tolerance are integrated in time. If the
        trajectory settles, the iteration polishes its end point; if it keeps
        moving (a feedback loop oscillates), the state returned is its average
        over the last stretch of the trajectory, which is the population mean of
        cells oscillating out of phase; such conditions are flagged as not
        converged.

        Parameters
        ----------
        inputs
            Condition inputs.
        x0
            Starting states, ``(B, n_genes)``; default: half the maximal levels ``m/d``.
        tol
            Largest relative change ``|P/d - x| / x`` accepted.
        max_iter
            Iterations before falling back to integration.
        fallback
            Integrate conditions the iteration does not settle.
        """
        n = inputs.n
        if x0 is None:
            x = np.broadcast_to(self.max_rate / self.degradation * 0.5, (n, self.n_genes)).copy()
        else:
            x = np.array(x0, dtype=np.float64, copy=True)
        x, converged, n_iter = self._iterate(x, inputs, tol=tol, max_iter=max_iter)
        # the iteration can also settle on an unstable equilibrium of a feedback loop
        # (the centre of an oscillation); those are not steady states of the cells
        converged &= ~self.unstable(x, inputs)
        if converged.all() or not fallback:
            return SteadyState(x=x, converged=converged, n_iter=n_iter)
        bad = np.flatnonzero(~converged)
        logger.info(
            "%d of %d conditions did not settle by iteration; integrating them.", len(bad), n
        )
        slow = 1.0 / float(self.degradation.min())
        times = np.linspace(10.0 * slow, 20.0 * slow, 41)
        xb = np.empty((len(bad), self.n_genes))
        settled = np.zeros(len(bad), dtype=bool)
        step = max(1, _MAX_ODE_VARIABLES // self.n_genes)
        for s in range(0, len(bad), step):
            part = np.arange(s, min(s + step, len(bad)))
            traj = self.trajectory(x[bad[part]], inputs.take(bad[part]), times)
            late = np.log(traj[20:] + self._floor)
            settled[part] = np.max(np.abs(late - late[-1]), axis=(0, 2)) < 1e-3
            # settled: the end point; oscillating: the average over the late window
            xb[part] = np.where(settled[part, None], traj[-1], traj[20:].mean(axis=0))
        if settled.any():
            sub = np.flatnonzero(settled)
            polished, ok, extra = self._iterate(
                xb[sub], inputs.take(bad[sub]), tol=tol, max_iter=max_iter, alpha0=0.2
            )
            ok &= ~self.unstable(polished, inputs.take(bad[sub]))
            xb[sub] = polished
            converged[bad[sub]] = ok
            n_iter += extra
        x[bad] = xb
        if not settled.all():
            logger.warning(
                "%d conditions oscillate (a feedback loop does not settle); their state is the "
                "average over an oscillation window.",
                int((~settled).sum()),
            )
        return SteadyState(x=x, converged=converged, n_iter=n_iter)

    def _iterate(
        self,
        x: np.ndarray,
        inputs: RateInputs,
        *,
        tol: float,
        max_iter: int,
        alpha0: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        n = x.shape[0]
        alpha = np.full(n, alpha0)
        prev = np.full(n, np.inf)
        converged = np.zeros(n, dtype=bool)
        active = np.arange(n)
        it = 0
        for it in range(1, max_iter + 1):  # noqa: B007
            xa = x[active]
            inp = inputs.take(active)
            target = self.production(xa, inp) / self.degradation
            step = target - xa
            resid = np.max(np.abs(step) / (np.maximum(xa, target) + self._floor), axis=1)
            done = resid < tol
            grew = resid > prev[active]
            alpha[active] = np.where(
                grew, np.maximum(alpha[active] * 0.5, 0.02), np.minimum(alpha[active] * 1.1, 1.0)
            )
            prev[active] = resid
            x[active] = xa + alpha[active, None] * step
            converged[active[done]] = True
            active = active[~done]
            if not len(active):
                break
        return x, converged, it

    def unstable(self, x: np.ndarray, inputs: RateInputs) -> np.ndarray:
        """Whether each equilibrium ``x`` is unstable (a feedback loop would oscillate or switch).

        At an equilibrium the ODE Jacobian is similar to ``D (J - I)``, with ``J``
        the log-space Jacobian; it is block-triangular over the strongly connected
        groups of regulators (the feedback loops), so only the eigenvalues of
        those small blocks decide stability.
        """
        out = np.zeros(x.shape[0], dtype=bool)
        if not self._loops:
            return out
        g, h = self._log_gains(x, inputs)
        dense = self._w_rr
        for loop in self._loops:
            genes = self.regulators[loop]
            w = dense[loop][:, loop].toarray()  # w[j, i]: edge from loop[j] to loop[i]
            jac = g[:, genes, None] * w.T[None] * h[:, None, loop]
            block = self.degradation[genes][None, :, None] * (jac - np.eye(len(loop))[None])
            out |= np.linalg.eigvals(block).real.max(axis=1) > 1e-9
        return out

    # ------------------------------------------------------------ trajectories
    def trajectory(
        self,
        x0: np.ndarray,
        inputs: RateInputs,
        times: np.ndarray,
        *,
        rtol: float = 1e-6,
    ) -> np.ndarray:
        """Integrate the ODEs from ``x0`` under ``inputs``.

        Parameters
        ----------
        x0
            ``(B, n_genes)`` starting states.
        inputs
            Inputs that hold from time 0 on (e.g. after a signal).
        times
            Non-negative times (hours) at which to report the state.

        Returns
        -------
        ``(len(times), B, n_genes)`` states.
        """
        times = np.asarray(times, dtype=np.float64)
        b, g = x0.shape
        order = np.argsort(times)
        t_sorted = times[order]
        t_end = float(t_sorted[-1]) if len(t_sorted) else 0.0
        out = np.empty((len(times), b, g))
        if t_end <= 0.0:
            out[:] = x0[None]
            return out
        atol = float(np.min(self._floor)) * 1e3
        step = max(1, _MAX_ODE_VARIABLES // g)
        for s in range(0, b, step):
            rows = np.arange(s, min(s + step, b))
            sub = inputs.take(rows)
            nb = len(rows)

            def rhs(_t: float, y: np.ndarray, sub: RateInputs = sub, nb: int = nb) -> np.ndarray:
                xs = np.maximum(y.reshape(nb, g), 0.0)
                return self.derivative(xs, sub).ravel()

            # explicit Runge-Kutta: the systems are not stiff, and implicit methods
            # would build dense Jacobians of (conditions x genes)^2 entries
            sol = solve_ivp(
                rhs,
                (0.0, t_end),
                np.asarray(x0[rows], dtype=np.float64).ravel(),
                method="RK45",
                t_eval=t_sorted,
                rtol=rtol,
                atol=atol,
            )
            if not sol.success:  # pragma: no cover - smooth, bounded systems
                msg = f"Integration of the gene-regulatory ODEs failed: {sol.message}"
                raise RuntimeError(msg)
            out[order, s : s + nb] = np.maximum(sol.y.T.reshape(len(t_sorted), nb, g), 0.0)
        return out

        def rhs(_t: float, y: np.ndarray) -> np.ndarray:
            xs = np.maximum(y.reshape(b, g), 0.0)
            return self.derivative(xs, inputs).ravel()

        atol = float(np.min(self._floor)) * 1e3
        sol = solve_ivp(
            rhs,
            (0.0, t_end),
            np.asarray(x0, dtype=np.float64).ravel(),
            method="LSODA",
            t_eval=t_sorted,
            rtol=rtol,
            atol=atol,
        )
        if not sol.success:  # pragma: no cover - LSODA rarely fails on these smooth systems
            msg = f"Integration of the gene-regulatory ODEs failed: {sol.message}"
            raise RuntimeError(msg)
        states = np.maximum(sol.y.T.reshape(len(t_sorted), b, g), 0.0)
        out[order] = states
        return out

    # ---------------------------------------------------------- noise propagation
    def _log_gains(self, x: np.ndarray, inputs: RateInputs) -> tuple[np.ndarray, np.ndarray]:
        """Factors of the log-space Jacobian ``J_ij = g_i w_ji h_j``."""
        occ = self.occupancy(x, inputs)
        h = self.hill * occ * (1.0 - occ)  # d occupancy / d log activity
        z = self.promoter(occ)
        s = expit(z)
        f = self.basal + (1.0 - self.basal) * s
        denom = inputs.scale * f + inputs.add
        num = inputs.scale * (1.0 - self.basal) * s * (1.0 - s)
        g = np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)
        return g, h

    def propagate(
        self,
        x: np.ndarray,
        inputs: RateInputs,
        loadings: np.ndarray,
        *,
        max_order: int = 100,
        tol: float = 1e-7,
        clip: float = 5.0,
    ) -> np.ndarray:
        """Propagate fluctuations of transcription rates through the network.

        A cell whose log transcription rates deviate from the condition's by
        ``z @ loadings`` (extrinsic noise, cell cycle) settles, to first order,
        at ``log x + z @ S`` with ``S = loadings (I - J^T)^{-1}``, where ``J`` is
        the Jacobian of log production with respect to log expression
        (``J_ij = g_i w_ji h_j`` on the edges ``j -> i``).

        Only regulators pass fluctuations on, so the system is solved on the
        regulators and then pushed to every gene with one sparse product: with
        ``M = diag(h) W_RR diag(g_R)`` and ``U = L_R (I - M)^{-1}``,
        ``S = L + g * ((U * h) @ W)``. ``U`` is summed as the Neumann series
        ``sum_t L_R M^t`` (sparse products for all conditions at once); where
        strong feedback makes the series diverge or converge slowly, ``U`` is
        solved exactly with a sparse LU factorisation of ``I - M``.

        Parameters
        ----------
        x
            ``(B, n_genes)`` states (steady states).
        inputs
            Condition inputs.
        loadings
            ``(k, n_genes)`` effect of each of ``k`` factors on log transcription.
        max_order
            Most terms of the series before switching to the exact solve.
        tol
            The series stops when its largest new term is below this.
        clip
            Bound on ``|S|`` (guards against states next to a bifurcation).

        Returns
        -------
        ``(B, k, n_genes)`` sensitivities ``S``.
        """
        b = x.shape[0]
        k = loadings.shape[0]
        r = self.n_regulators
        g, h = self._log_gains(x, inputs)
        produced = (inputs.scale + inputs.add) > 0
        base = np.broadcast_to(loadings[None], (b, k, self.n_genes)) * produced[:, None, :]
        g_r = g[:, self.regulators]
        # Neumann series on the regulators (cheap: the regulator network is sparse
        # and close to acyclic) ...
        term = base[:, :, self.regulators]
        u = term.copy()
        for _ in range(max_order):
            term = (
                np.asarray((term * h[:, None, :]).reshape(b * k, r) @ self._w_rr).reshape(b, k, r)
                * g_r[:, None, :]
            )
            u += term
            size = float(np.abs(term).max(initial=0.0))
            if size < tol or size > 1e3:
                break
        # ... and an exact solve where strong feedback makes it diverge or crawl
        bad = np.flatnonzero(np.abs(term).max(axis=(1, 2), initial=0.0) >= tol)
        if len(bad):
            logger.debug(
                "Exact noise propagation for %d conditions with strong feedback.", len(bad)
            )
            w = self._w_rr.tocoo()
            eye = sp.identity(r, format="csc")
            for i in bad:
                # (I - M)^T U^T = L_R^T with M = diag(h) W_RR diag(g_R), sparse like W_RR
                m_t = sp.csc_matrix(
                    (g_r[i][w.col] * w.data * h[i][w.row], (w.col, w.row)), shape=(r, r)
                )
                rhs = np.ascontiguousarray(base[i][:, self.regulators].T)
                try:
                    u[i] = splu(eye - m_t).solve(rhs).T
                except RuntimeError:
                    logger.warning(
                        "Noise propagation met a singular Jacobian (a bifurcation); using least squares."
                    )
                    u[i] = np.linalg.lstsq((eye - m_t).toarray(), rhs, rcond=None)[0].T
        u *= h[:, None, :]
        pushed = np.asarray(u.reshape(b * k, r) @ self.weights).reshape(b, k, self.n_genes)
        return np.clip(base + pushed * g[:, None, :], -clip, clip)
