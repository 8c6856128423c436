"""
Classifying wines with multinomial logistic experts
===================================================

The wine data (178 wines of three cultivars, shipped with scikit-learn): a
mixture of multinomial logistic experts on two standardised chemical
measurements, with the number of experts chosen by BIC and the class
probabilities drawn over the plane.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.datasets import load_wine

from moestat import MultinomialLogisticMoE

wine = load_wine()
columns = ["alcohol", "flavanoids"]
X = pd.DataFrame(wine.data, columns=wine.feature_names)[columns]
X = (X - X.mean()) / X.std()
y = np.array(wine.target_names)[wine.target]

# %%
# Choosing the number of experts by BIC
# -------------------------------------
fits = {m: MultinomialLogisticMoE(m, random_state=0).fit(X, y) for m in (1, 2, 3)}
table = pd.DataFrame(
    {
        "log-likelihood": [f.log_likelihood_ for f in fits.values()],
        "parameters": [f.n_parameters_ for f in fits.values()],
        "BIC": [f.bic(X, y) for f in fits.values()],
        "accuracy": [f.score(X, y) for f in fits.values()],
    },
    index=pd.Index(list(fits), name="n_experts"),
)
print(table.round(3).to_string())
best = fits[int(table["BIC"].idxmin())]

# %%
# Class probabilities over the plane
# ----------------------------------
grid = np.linspace(-3, 3, 121)
gx, gy = np.meshgrid(grid, grid)
plane = pd.DataFrame(np.column_stack([gx.ravel(), gy.ravel()]), columns=columns)
proba = best.predict_proba(plane)
fig, ax = plt.subplots(figsize=(6, 5))
colors = np.array([[0.85, 0.3, 0.3], [0.3, 0.6, 0.3], [0.3, 0.4, 0.85]])
ax.imshow(
    (proba @ colors).reshape(gx.shape + (3,)),
    origin="lower",
    extent=(-3, 3, -3, 3),
    alpha=0.5,
)
for k, label in enumerate(best.classes_):
    rows = y == label
    ax.scatter(X.iloc[rows, 0], X.iloc[rows, 1], s=12, color=colors[k], label=label)
ax.set_xlabel("alcohol (standardised)")
ax.set_ylabel("flavanoids (standardised)")
ax.set_title(f"BIC chooses n_experts = {best.n_experts}")
ax.legend(loc="lower right", fontsize="small")

plt.show()
