"""reviews; worklist columns on predictions (max_risk, flagged), backfilled from findings

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 13:52:01.466975

The worklist sorts and filters ten thousand cases in SQL, which it cannot do inside the findings
JSON on both backends; ``max_risk`` and ``flagged`` are therefore stored next to it. Existing
predictions are backfilled here with a frozen copy of the rule in
``clinic.inference.records.risk_summary`` (a migration must not change when that code does).
"""

import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FLAG_THRESHOLD = 0.5
BATCH = 1000

predictions = sa.table(
    'predictions',
    sa.column('id', sa.Integer()),
    sa.column('findings', sa.JSON()),
    sa.column('max_risk', sa.Float()),
    sa.column('flagged', sa.JSON()),
)


def _summary(findings: Any) -> tuple[float | None, list[str]]:
    """(highest non-abstained probability, labels at or above the threshold, highest first)."""
    scored = []
    for finding in findings or []:
        probability = finding.get('probability')
        if finding.get('abstained') or not isinstance(probability, int | float):
            continue
        if math.isfinite(probability):
            scored.append((float(probability), str(finding.get('label'))))
    scored.sort(key=lambda item: (-item[0], item[1]))
    flagged = [label for probability, label in scored if probability >= FLAG_THRESHOLD]
    return (scored[0][0] if scored else None), flagged


def _backfill() -> None:
    bind = op.get_bind()
    statement = (
        sa.update(predictions)
        .where(predictions.c.id == sa.bindparam('row_id'))
        .values(max_risk=sa.bindparam('risk'), flagged=sa.bindparam('flags', type_=sa.JSON()))
    )
    last = 0
    while True:
        rows = bind.execute(
            sa.select(predictions.c.id, predictions.c.findings)
            .where(predictions.c.id > last)
            .order_by(predictions.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        values = []
        for row_id, findings in rows:
            risk, flags = _summary(findings)
            values.append({'row_id': row_id, 'risk': risk, 'flags': flags})
        bind.execute(statement, values)
        last = rows[-1][0]


def upgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_risk', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('flagged', sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f('ix_predictions_max_risk'), ['max_risk'], unique=False)
    _backfill()
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.alter_column('flagged', existing_type=sa.JSON(), nullable=False)

    op.create_table('reviews',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('encounter_id', sa.Integer(), nullable=False),
    sa.Column('prediction_id', sa.Integer(), nullable=True),
    sa.Column('label', sa.String(length=128), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('corrected_probability', sa.Float(), nullable=True),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.ForeignKeyConstraint(['encounter_id'], ['encounters.id'], name=op.f('fk_reviews_encounter_id_encounters'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['prediction_id'], ['predictions.id'], name=op.f('fk_reviews_prediction_id_predictions'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reviews'))
    )
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reviews_encounter_id'), ['encounter_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_reviews_prediction_id'), ['prediction_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reviews_prediction_id'))
        batch_op.drop_index(batch_op.f('ix_reviews_encounter_id'))

    op.drop_table('reviews')
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_predictions_max_risk'))
        batch_op.drop_column('flagged')
        batch_op.drop_column('max_risk')
